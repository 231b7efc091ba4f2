-- Private networking through the data nodes (issue 8 §6). Same in both dialects.
--
-- Where the data nodes reach the vault through an EAR private endpoint ("host:port"; in Azure the
-- private IP of the endpoint's network interface and 443), recorded by the platform operator.
ALTER TABLE ear_private_endpoints ADD COLUMN private_address TEXT;

-- A static → roleId migration under requirePrivateNetworking: the roleId the data nodes are
-- validating while the static credentials (client_id, tenant_id, static_secret_ciphertext) stay
-- in force. Set only on a static row; cleared when the row becomes secretless.
ALTER TABLE ear_azure_key_vault ADD COLUMN pending_role_id TEXT;
