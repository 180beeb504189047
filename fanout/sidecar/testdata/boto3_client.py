"""Reads through rekey-agent's Secrets Manager API with boto3, unchanged
code but for endpoint_url. (Debian's boto3 predates BatchGetSecretValue:
the Go test reads it with aws-sdk-go-v2.)

  boto3_client.py get SECRET_ID        one GetSecretValue: its JSON, or ERROR <code>
  boto3_client.py describe SECRET_ID   DescribeSecret
  boto3_client.py loop SECRET_ID SECS  reads for SECS seconds; one line per read:
                                       <start unix time> <VersionId>

Endpoint and keys come from REKEY_ENDPOINT, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION.
"""
import json
import os
import sys
import time

import boto3
import botocore.exceptions

client = boto3.client("secretsmanager", endpoint_url=os.environ["REKEY_ENDPOINT"])
mode, args = sys.argv[1], sys.argv[2:]


def call(fn, **kw):
    try:
        out = fn(**kw)
    except botocore.exceptions.ClientError as e:
        print("ERROR", e.response["Error"]["Code"])
        return
    out.pop("ResponseMetadata", None)
    print(json.dumps(out, default=str))


if mode == "get":
    call(client.get_secret_value, SecretId=args[0])
elif mode == "describe":
    call(client.describe_secret, SecretId=args[0])
elif mode == "loop":
    end = time.time() + float(args[1])
    while time.time() < end:
        start = time.time()
        v = client.get_secret_value(SecretId=args[0])
        print("%.6f %s" % (start, v["VersionId"]), flush=True)
else:
    sys.exit("unknown mode " + mode)
