"""``python -m skyassets.emulator`` started as a user starts it: faults and tokens from its command line."""

import json
import subprocess
import sys

import requests


def test_the_command_line_arms_faults_and_grants_tokens(tmp_path):
    fault = {"kind": "status", "endpoint": "resolver", "status": 503, "times": -1}
    command = [sys.executable, "-m", "skyassets.emulator", "--home", str(tmp_path), "--no-s3", "--image-size", "32",
               "--grant", "my-token:2107", "--fault", json.dumps(fault)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[-1]
        armed = requests.get(f"{url}/_emulator/faults", timeout=10).json()
        assert [{k: f[k] for k in fault} for f in armed] == [fault]
        refused = requests.post(f"{url}/_emulator/faults", json={"kind": "drop", "times": -7}, timeout=10)
        assert refused.status_code == 400
        assert refused.json()["msg"] == "times is how many requests it strikes (-1: every one), not -7"

        def whoami(token: str) -> dict:
            return requests.get(f"{url}/whoami", headers={"Authorization": f"token {token}"}, timeout=10).json()

        assert whoami("my-token")["anon"] is False and whoami("other")["anon"] is True
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_fault_that_is_not_one_is_a_usage_error_said_in_one_line(tmp_path):
    for bad, said in (
        ("{not json", "not JSON"),
        ('{"kind": "nonsense"}', "unknown fault kind 'nonsense'"),
        ('{"kind": "status", "colour": "red"}', "unknown fault field 'colour'; the fields: kind, match"),
        ('{"kind": "status", "status": 200}', "an error status (400 to 599), not 200"),
        ('{"kind": "drop", "after_bytes": -5}', "cannot be negative"),
        ('{"kind": "drop", "after_bytes": "x"}', "whole numbers"),
        ('{"kind": "omit", "endpoint": "download"}', "it can strike: path_lookup"),
        ('{"kind": "status", "endpoint": "s3"}', "runs no S3 server"),
    ):
        done = subprocess.run([sys.executable, "-m", "skyassets.emulator", "--home", str(tmp_path), "--no-s3",
                               "--fault", bad], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and said in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # no usage block, no traceback
