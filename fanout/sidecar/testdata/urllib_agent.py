"""Reads a secret from rekey-agent's AWS Secrets Manager Agent port the way
AWS's documentation shows it, with Python's standard library only.

  urllib_agent.py SECRET_ID    prints the GetSecretValue JSON, or ERROR <status> <body>

The port is REKEY_AWS_AGENT_PORT; the SSRF token is read from the
environment as AWS's agent documents (AWS_TOKEN).
"""
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

port = os.environ["REKEY_AWS_AGENT_PORT"]
url = "http://localhost:%s/secretsmanager/get?secretId=%s" % (port, urllib.parse.quote(sys.argv[1], safe=""))
req = urllib.request.Request(url, headers={"X-Aws-Parameters-Secrets-Token": os.environ.get("AWS_TOKEN", "")})
try:
    with urllib.request.urlopen(req) as resp:
        print(json.dumps(json.loads(resp.read())))
except urllib.error.HTTPError as e:
    print("ERROR", e.code, e.read().decode())
