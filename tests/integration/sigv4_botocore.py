"""Sign requests with botocore (the copy inside Debian's awscli, which is what
the AWS CLI signs with) and send them to tests/tools/sigv4_echo_server, which
verifies them with kindling's SigV4.  Signed requests must be accepted with
the path, query and body the server saw reported back; tampered, stale and
wrongly keyed ones must be refused with Lambda's error types.

    /usr/bin/python3 sigv4_botocore.py LAMBDA_PORT S3_PORT

Prints one "ok:" line per check and exits non-zero on the first failure.
"""
import datetime
import hashlib
import http.client
import json
import sys
import urllib.parse

import awscli  # noqa: F401  (makes the bundled botocore importable as "botocore")
import botocore.auth
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence

KEY = Credentials("AKIAKINDLINGTEST0001", "kindling/test+secret0123456789abcdefABCDEF")
TEMP_KEY = Credentials("AKIAKINDLINGTEST0001", "kindling/test+secret0123456789abcdefABCDEF", "IQoJb3JpZ2luX2VjEXAMPLE")
WRONG_SECRET = Credentials("AKIAKINDLINGTEST0001", "not the secret")
UNKNOWN = Credentials("AKIAUNKNOWN000000000", "whatever")

checks = 0


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def sign(port, method, path, query=None, body=b"", headers=None, creds=KEY, service="lambda", signer=SigV4Auth):
    """A prepared request as botocore sends it: the path as given (already
    encoded, as botocore's serializer makes it), the query encoded by
    botocore, signed with |signer|."""
    url = "http://127.0.0.1:%d%s" % (port, path)
    if query:
        url += "?" + percent_encode_sequence(query)
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    signer(creds, service, "us-east-1").add_auth(req)
    return req.prepare()


def send(prepared, path=None, body=None, header_edits=None):
    """Send |prepared| exactly, or with the request target, body or headers
    replaced; returns (status, parsed JSON body, headers)."""
    parts = urllib.parse.urlsplit(prepared.url)
    target = path if path is not None else parts.path + ("?" + parts.query if parts.query else "")
    data = prepared.body if body is None else body
    if isinstance(data, str):
        data = data.encode()
    data = data or b""
    headers = {k: v for k, v in prepared.headers.items() if body is None or k.lower() != "content-length"}
    for k, v in (header_edits or {}).items():
        for existing in [h for h in headers if h.lower() == k.lower()]:
            del headers[existing]
        if v is not None:
            headers[k] = v
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.putrequest(prepared.method, target, skip_host=True, skip_accept_encoding=True)
    if not any(h.lower() == "host" for h in headers):
        conn.putheader("Host", parts.netloc)
    for k, v in headers.items():
        conn.putheader(k, v)
    if not any(h.lower() == "content-length" for h in headers) and (data or prepared.method in ("POST", "PUT")):
        conn.putheader("Content-Length", str(len(data)))
    conn.endheaders(data)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        parsed = json.loads(raw)
    except ValueError:
        fail("%s %s: the answer is not JSON: %r" % (prepared.method, target, raw[:200]))
    return resp.status, parsed, {k.lower(): v for k, v in resp.getheaders()}


def expect_accepted(what, prepared, raw_path, query="", body=b""):
    global checks
    status, obj, _ = send(prepared)
    if status != 200 or not obj.get("accepted"):
        fail("%s: refused: %d %s" % (what, status, obj))
    if obj["raw_path"] != raw_path:
        fail("%s: server saw raw path %r, sent %r" % (what, obj["raw_path"], raw_path))
    if obj["query"] != query:
        fail("%s: server saw query %r, sent %r" % (what, obj["query"], query))
    if obj["body_sha256"] != hashlib.sha256(body).hexdigest():
        fail("%s: body hash differs" % what)
    if obj["key"] != KEY.access_key or obj["region"] != "us-east-1" or obj["profile"] != "default":
        fail("%s: wrong key, region or profile: %s" % (what, obj))
    checks += 1
    return obj


def expect_refused(what, result, error_type, words):
    global checks
    status, obj, headers = result
    if status != 403 or headers.get("x-amzn-errortype") != error_type or words not in obj.get("message", ""):
        fail("%s: want 403 %s with %r, got %d %s %s" % (what, error_type, words, status,
                                                          headers.get("x-amzn-errortype"), obj))
    checks += 1


def enc(name):
    """How botocore's rest-json serializer puts a name into a path."""
    return urllib.parse.quote(name, safe="")


def lambda_checks(port):
    names = ["my-function", "arn:aws:lambda:us-east-1:123456789012:function:my-function:1",
             "my-function:$LATEST", "caf\u00e9-\u1234", "a b+c~d", "semi;colon,comma=eq&amp"]
    payloads = [b"", b'{"key": "value"}', "{\"unicode\": \"\u00e9\u1234\"}".encode(), bytes(range(256)) * 64]
    for i, name in enumerate(names):
        path = "/2015-03-31/functions/%s/invocations" % enc(name)
        body = payloads[i % len(payloads)]
        p = sign(port, "POST", path, body=body,
                 headers={"X-Amz-Invocation-Type": "RequestResponse", "X-Amz-Log-Type": "Tail",
                          "Content-Type": "application/json"})
        obj = expect_accepted("invoke %r" % name, p, path, body=body)
        if obj["path"] != "/2015-03-31/functions/%s/invocations" % name:
            fail("invoke %r: decoded path %r" % (name, obj["path"]))
        # Tampered copies of the same signed request.
        expect_refused("invoke %r, body changed" % name, send(p, body=body + b" "), "InvalidSignatureException",
                       "does not match the signature you provided")
        expect_refused("invoke %r, path changed" % name,
                       send(p, path="/2015-03-31/functions/%s/invocations" % enc(name + "x")),
                       "InvalidSignatureException", "The Canonical String for this request should have been")
        expect_refused("invoke %r, header changed" % name, send(p, header_edits={"X-Amz-Invocation-Type": "Event"}),
                       "InvalidSignatureException", "does not match the signature you provided")
        expect_refused("invoke %r, no Authorization" % name, send(p, header_edits={"Authorization": None}),
                       "MissingAuthenticationTokenException", "Missing Authentication Token")
    print("ok: %d function names with ':', '$', unicode and reserved characters, and tampered copies" % len(names))

    queries = [{"MaxItems": "10"}, {"Marker": "abc/def==+", "MaxItems": "5", "FunctionVersion": "ALL"},
               {"Qualifier": "$LATEST"}, {"k\u00e9y": "v\u00e1lue with spaces", "empty": ""}]
    for q in queries:
        p = sign(port, "GET", "/2015-03-31/functions/", query=q)
        raw_query = percent_encode_sequence(q)
        expect_accepted("list %r" % q, p, "/2015-03-31/functions/", query=raw_query)
        expect_refused("list %r, query changed" % q,
                       send(p, path="/2015-03-31/functions/?" + raw_query + "&MaxItems=1"),
                       "InvalidSignatureException", "does not match the signature you provided")
    print("ok: %d query strings (reordered, encoded, unicode, empty values), and a changed one" % len(queries))

    # PUT and DELETE with bodies and paths of other API versions.
    p = sign(port, "PUT", "/2017-10-31/functions/%s/concurrency" % enc("fn:1"),
             body=b'{"ReservedConcurrentExecutions": 5}', headers={"Content-Type": "application/json"})
    expect_accepted("put concurrency", p, "/2017-10-31/functions/fn%3A1/concurrency",
                    body=b'{"ReservedConcurrentExecutions": 5}')
    p = sign(port, "DELETE", "/2015-03-31/functions/%s" % enc("old fn"))
    expect_accepted("delete", p, "/2015-03-31/functions/old%20fn")
    print("ok: PUT and DELETE")

    # A temporary key: X-Amz-Security-Token is signed and passed through.
    p = sign(port, "GET", "/2015-03-31/functions/", creds=TEMP_KEY)
    obj = expect_accepted("session token", p, "/2015-03-31/functions/")
    if not obj["session_token"] or "x-amz-security-token" not in p.headers["Authorization"]:
        fail("session token not seen as signed: %s" % obj)
    # botocore signs with Date (in email.utils's "-0000" form) if the request has one.
    p = sign(port, "GET", "/2015-03-31/functions/", headers={"Date": "placeholder"})
    if "date;host" not in p.headers["Authorization"] or "-0000" not in p.headers["Date"]:
        fail("botocore did not sign with Date: %s / %s" % (p.headers["Authorization"], p.headers.get("Date")))
    expect_accepted("Date header", p, "/2015-03-31/functions/")
    print("ok: a session token and the Date header")

    # Keys and clocks.
    expect_refused("wrong secret", send(sign(port, "GET", "/2015-03-31/functions/", creds=WRONG_SECRET)),
                   "InvalidSignatureException", "Check your AWS Secret Access Key")
    expect_refused("unknown key", send(sign(port, "GET", "/2015-03-31/functions/", creds=UNKNOWN)),
                   "UnrecognizedClientException", "The security token included in the request is invalid.")
    expect_refused("other service", send(sign(port, "GET", "/2015-03-31/functions/", service="s3")),
                   "InvalidSignatureException", "Credential should be scoped to correct service: 'lambda'.")
    real = botocore.auth.datetime

    class Clock:
        """botocore.auth's datetime, with utcnow() moved by |shift|."""

        def __init__(self, shift):
            self.shift = shift

        def __getattr__(self, name):
            return getattr(real, name)

        @property
        def datetime(self):
            shift = self.shift

            class Shifted(real.datetime):
                @classmethod
                def utcnow(cls):
                    return real.datetime.utcnow() + shift
            return Shifted
    try:
        botocore.auth.datetime = Clock(datetime.timedelta(minutes=-20))
        stale = sign(port, "GET", "/2015-03-31/functions/")
        botocore.auth.datetime = Clock(datetime.timedelta(minutes=20))
        future = sign(port, "GET", "/2015-03-31/functions/")
    finally:
        botocore.auth.datetime = real
    expect_refused("20 minutes old", send(stale), "InvalidSignatureException", "Signature expired: ")
    expect_refused("20 minutes ahead", send(future), "InvalidSignatureException", "Signature not yet current: ")
    print("ok: a wrong secret, an unknown key, another service's scope, a stale and a future date")


def s3_checks(port):
    # S3 signs the path as sent: object keys encoded once, dots kept.
    keys = ["chunks/ab/cd", "odd/sp ace+plus~x", "dots/./../x", "caf\u00e9:\u1234", "a//b"]
    for k in keys:
        path = "/kindling-test/" + urllib.parse.quote(k, safe="/~")
        for method, body in (("GET", b""), ("PUT", b"chunk bytes \x00\xff")):
            p = sign(port, method, path, body=body, service="s3", signer=S3SigV4Auth)
            expect_accepted("s3 %s %r" % (method, k), p, path, body=body)
            if body:
                expect_refused("s3 %s %r, body changed" % (method, k), send(p, body=body[:-1] + b"\xfe"),
                               "InvalidSignatureException", "'x-amz-content-sha256' header does not match")
    q = {"list-type": "2", "prefix": "t0/refs/", "continuation-token": "a/b== c"}
    p = sign(port, "GET", "/kindling-test", query=q, service="s3", signer=S3SigV4Auth)
    expect_accepted("s3 list", p, "/kindling-test", query=percent_encode_sequence(q))
    print("ok: %d S3 object keys (spaces, dots, unicode, double slashes) and a listing" % len(keys))


def main():
    lambda_checks(int(sys.argv[1]))
    s3_checks(int(sys.argv[2]))
    print("ok: %d botocore checks" % checks)


main()
