"""Send one Lambda API request signed by botocore (the copy inside Debian's
awscli, what the AWS CLI signs with), for checks the CLI cannot express:
hostile paths, malformed bodies, error headers, stale dates.

    /usr/bin/python3 lambda_raw.py PORT CREDENTIALS_FILE PROFILE METHOD PATH [options]
      --body TEXT | --body-file FILE | --body-size N   the body (default empty)
      --header NAME:VALUE                              an extra header (repeatable)
      --date-offset SECONDS                            sign with a clock this far off

PATH is sent exactly as given (already percent-encoded).  Prints one JSON
object: {"status", "headers" (lowercase names), "body" (text), "json" (the
body parsed, or null)}.
"""
import argparse
import configparser
import datetime
import http.client
import json

import awscli  # noqa: F401  (makes the bundled botocore importable)
import botocore.auth
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("credentials")
p.add_argument("profile")
p.add_argument("method")
p.add_argument("path")
p.add_argument("--body")
p.add_argument("--body-file")
p.add_argument("--body-size", type=int)
p.add_argument("--header", action="append", default=[])
p.add_argument("--date-offset", type=int, default=0)
a = p.parse_args()

cp = configparser.ConfigParser()
cp.read(a.credentials)
creds = Credentials(cp[a.profile]["aws_access_key_id"], cp[a.profile]["aws_secret_access_key"])
body = b""
if a.body is not None:
    body = a.body.encode()
elif a.body_file:
    body = open(a.body_file, "rb").read()
elif a.body_size:
    body = b'{"x":"' + b"a" * max(0, a.body_size - 8) + b'"}'
headers = dict(h.split(":", 1) for h in a.header)
url = "http://127.0.0.1:%d%s" % (a.port, a.path)
req = AWSRequest(method=a.method, url=url, data=body, headers=headers)
real = botocore.auth.datetime


class Clock:
    """botocore.auth's datetime, with utcnow() moved by --date-offset."""

    def __getattr__(self, name):
        return getattr(real, name)

    @property
    def datetime(self):
        shift = datetime.timedelta(seconds=a.date_offset)

        class Shifted(real.datetime):
            @classmethod
            def utcnow(cls):
                return real.datetime.utcnow() + shift
        return Shifted


if a.date_offset:
    botocore.auth.datetime = Clock()
try:
    SigV4Auth(creds, "lambda", "us-east-1").add_auth(req)
finally:
    botocore.auth.datetime = real
prep = req.prepare()
conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=300)
conn.putrequest(a.method, a.path, skip_host=True, skip_accept_encoding=True)
if not any(k.lower() == "host" for k in prep.headers):
    conn.putheader("Host", "127.0.0.1:%d" % a.port)
for k, v in prep.headers.items():
    conn.putheader(k, v)
if "Content-Length" not in prep.headers:
    conn.putheader("Content-Length", str(len(body)))
conn.endheaders()
try:
    if body:
        conn.send(body)
    r = conn.getresponse()
    text = r.read().decode("utf-8", "replace")
    status, hdrs = r.status, {k.lower(): v for k, v in r.getheaders()}
except (BrokenPipeError, ConnectionResetError):
    # The server may answer (413) and close before the whole body is sent.
    r = conn.getresponse()
    text = r.read().decode("utf-8", "replace")
    status, hdrs = r.status, {k.lower(): v for k, v in r.getheaders()}
try:
    parsed = json.loads(text)
except ValueError:
    parsed = None
print(json.dumps({"status": status, "headers": hdrs, "body": text, "json": parsed}))
