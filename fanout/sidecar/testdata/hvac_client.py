"""Reads through rekey-agent's Vault API with hvac, unchanged code but for
the address (VAULT_ADDR) and token (VAULT_TOKEN).

  hvac_client.py get PATH          read_secret_version: its JSON, or ERROR <exception>
  hvac_client.py static ROLE       database static credentials
  hvac_client.py auth              is_authenticated()
  hvac_client.py loop PATH SECS    reads for SECS seconds; one line per read:
                                   <start unix time> <rekey_version>
"""
import json
import os
import sys
import time

import hvac
import hvac.exceptions

client = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
mode, args = sys.argv[1], sys.argv[2:]


def read(path):
    return client.secrets.kv.v2.read_secret_version(path=path, mount_point="secret")


try:
    if mode == "get":
        print(json.dumps(read(args[0])))
    elif mode == "static":
        print(json.dumps(client.secrets.database.get_static_credentials(name=args[0])))
    elif mode == "auth":
        print(client.is_authenticated())
    elif mode == "loop":
        end = time.time() + float(args[1])
        while time.time() < end:
            start = time.time()
            v = read(args[0])
            print("%.6f %s" % (start, v["data"]["data"]["rekey_version"]), flush=True)
    else:
        sys.exit("unknown mode " + mode)
except hvac.exceptions.VaultError as e:
    print("ERROR", type(e).__name__)
