"""schemathesis against the official Atlas OpenAPI subset (../shared/reference), with real
credentials: no 5xx, and every response conforms to the spec (status, content type, schema,
headers), and unauthenticated calls are refused."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import ACCEPT

SPEC = Path(__file__).resolve().parents[3] / "shared" / "reference" / "atlas-ear-subset.openapi.yaml"


def test_schemathesis_against_the_atlas_spec(up, bearer):
    assert SPEC.exists(), f"{SPEC} (../shared beside the project root)"
    st = Path(sys.executable).parent / "st"
    cmd = [
        str(st), "run", str(SPEC),
        "--url", up["control_plane_url"],
        "-H", f"Accept: {ACCEPT}",
        "-H", f"Authorization: Bearer {bearer}",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance,response_headers_conformance,ignored_auth",
        "--max-examples", os.environ.get("ATREST_SCHEMATHESIS_EXAMPLES", "40"),
        "--seed", "1",
        "--no-color",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    print(out.stdout[-20000:])
    print(out.stderr[-5000:])
    assert out.returncode == 0, "schemathesis found failures (see the output above)"
