#!/usr/bin/env python3
"""Writes the hand-made seed inputs of each fuzz target into fuzz/seeds/<target>/.

The committed corpus (fuzz/corpus/<target>/) is these seeds plus what the
fuzzer found, minimized with `cargo fuzz cmin`; see docs/fuzzing.md.
Run from the repository root: python3 fuzz/seeds/make_seeds.py
Tokens for jwt_header_claims signed with the test RSA key are taken from
fuzz/seeds/jwt_signed.txt (made once; the private key was not kept).
"""
import base64, hashlib, json, os, re, zlib, glob

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "fuzz", "seeds")


def write(target, items):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        os.remove(os.path.join(d, old))
    for item in items:
        if isinstance(item, str):
            item = item.encode()
        name = hashlib.sha1(item).hexdigest()
        with open(os.path.join(d, name), "wb") as f:
            f.write(item)


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# normalize_path: one options byte, then the path.
paths = [
    "/", "/admin", "/admin/", "/a/b.c/.well-known/x", "/a/...", "/a/b-c_d~e!$&'()*+,;=:@",
    "/public/../admin", "/a/b/../../c", "/a/b/..", "/public/%2e%2e/admin", "/public/.%2E/admin",
    "/%2e%2e", "/a/./b/", "/./././admin", "/public/..%2fadmin", "/a%2fb", "/..", "/a/../../b",
    "//admin", "/a///b//", "//", "/a//..", "//..//admin", "/.//../admin", "/public//../admin",
    "/%00", "/a%5cb", "/a\\b", "/%", "/%2", "/%G1", "/%%41", "/a#frag", "/a b", "/a?b",
    "/%7e", "/%61%2D%5f%30", "/%3a", "/%c3%a9", "/%20%23%3F", "/%252e%252e/admin", "/a%25",
    "/%FF", "/a%C0%AE/x", "/%ED%A0%80", "/caf%C3%A9", "/%F0%9F%94%91", "/%61dmin",
    "/public/..;/admin", "/public/%2e%2e;/admin", "/.;/admin", "/a;jsessionid=1/b", "/a/...;x",
    "*", "admin", "",
]
seeds = []
for i, p in enumerate(paths):
    for flags in (1, 0, 7) if i % 3 == 0 else ((1,) if i % 3 == 1 else (6,)):
        seeds.append(bytes([flags]) + p.encode())
write("normalize_path", seeds)

# session_cookie: Cookie header values, one per line.
write("session_cookie", [
    "kg_session=abc",
    "theme=dark; kg_session=AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; lang=en",
    "kg_session=\"abc\"\nkg_session=zzz; kg_session-1=def",
    "kg_session-1=x; kg_session-2=y\nkg_session=z",
    "garbage; ;=; kg",
    "kg_login=" + b64(b"\x01" + bytes(12) + b'{"state":"x"}' + bytes(16)),
    b64(b"\x01" + bytes(40)),
    "eyJhbGciOiJIUzI1NiJ9.e30.sig",
    "kg_session= " + "A" * 300 + " ; kg_session-1=" + "B" * 100,
])

# api_key: candidate keys.
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def checksum(body):
    crc = zlib.crc32(body.encode())
    out = []
    for _ in range(6):
        out.append(B62[crc % 62])
        crc //= 62
    return "".join(reversed(out))


def key(prefix, random):
    body = prefix + random
    return body + checksum(body)


write("api_key", [
    key("kgp_", "3xY0qAbCdEfGhIjKlMnOpQrStUvWxYz12"[:32]),
    key("kgs_", "Q" * 32),
    key("kgs_", "0123456789abcdefghijABCDEFGHIJ01"),
    key("kgx_", "a" * 32),
    key("kgp_", "a" * 32)[:-1] + "0",
    "kgp_", "kgs_anything", "kg", "", "kgp_ééééé", "eyJhbGciOiJSUzI1NiJ9.e30.sig",
    "kgp_" + "a" * 30 + "é" + "000000",
])

# jwt_header_claims: tokens and claim objects.
keycloak = {
    "sub": "36fa", "preferred_username": "alice", "email": "alice@example.com",
    "exp": 1673171296, "iss": "https://idp.fuzz.invalid/realms/fuzz", "aud": "keygate",
    "realm_access": {"roles": ["admin", "user"]},
    "resource_access": {"APP-backend": {"roles": ["editor"]}, "x": {"roles": "one"}},
    "scope": "openid email  api", "groups": ["/ops", "/ops/oncall"], "typ": "Bearer",
}
jwts = [
    f'{b64(json.dumps({"alg": "none"}))}.{b64(json.dumps({"sub": "x"}))}.',
    f'{b64(json.dumps({"alg": "RS256", "kid": "k1", "typ": "JWT"}))}.{b64(json.dumps(keycloak))}.{b64(bytes(256))}',
    f'{b64(json.dumps({"alg": "HS256"}))}.{b64(json.dumps({"sub": "x", "exp": 99999999999}))}.{b64(bytes(32))}',
    f'{b64(json.dumps({"alg": "ES256", "kid": None}))}.e30.AAAA',
    "a.b", "a.b.c.d", "!!!.b.c",
    json.dumps(keycloak),
    json.dumps({"sub": 5, "exp": -1, "scope": ["a"], "groups": "g", "realm_access": []}),
]
signed = os.path.join(OUT, "jwt_signed.txt")
if os.path.exists(signed):
    jwts += [line.strip() for line in open(signed) if line.strip() and not line.startswith("#")]
write("jwt_header_claims", jwts)

# forward_auth_headers: header lines.
write("forward_auth_headers", [
    "x-forwarded-method: GET\nx-forwarded-uri: /public/x?y=1",
    "x-original-method: post\nx-original-uri: https://app.example.com/admin/x?q",
    "x-original-method: GET\nx-original-uri: /admin/x\nx-forwarded-uri: /public/x",
    "x-forwarded-method: GET\nx-forwarded-uri: /a\nx-original-method: get \nx-original-uri: /a",
    "2: GET\n0: /public/%2e%2e/admin",
    "3: DELETE\n1: http://host\nhost: example.com",
    "x-forwarded-method: G\tET\nx-forwarded-uri: //..//a",
    "authorization: Bearer x\ncookie: kg_session=1\nx-forwarded-host: a",
])

# config_yaml: the YAML blocks of the docs, the README and the Kubernetes
# ConfigMaps.
configs = []
for md in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [
    os.path.join(ROOT, "README.md"),
    os.path.join(ROOT, "deploy", "kubernetes", "README.md"),
]:
    text = open(md, encoding="utf-8").read()
    for block in re.findall(r"```ya?ml\n(.*?)```", text, re.S):
        configs.append(block)
for cm in sorted(glob.glob(os.path.join(ROOT, "deploy", "**", "configmap.yaml"), recursive=True)):
    text = open(cm, encoding="utf-8").read()
    m = re.search(r"keygate\.yaml: \|\n((?:    .*\n|\s*\n)+)", text)
    if m:
        configs.append("\n".join(line[4:] for line in m.group(1).split("\n")))
demo = os.path.join(ROOT, "dev", "demo.yaml")
if os.path.exists(demo):
    configs.append(open(demo, encoding="utf-8").read())
configs.append(
    "discovery-url: https://idp/realms/x\nclient-id: kg\nupstream-url: http://up\n"
    "match-claims: {email: '^.*@example\\.com$'}\nheaders: {X-Foo: bar}\n"
    "api-keys: {server-secret: '0123456789abcdef0123456789abcdef', rate-limit-service: 100/s burst 200, quota-personal: 1000/day}\n"
    "clock-skew: 30s\nlisten: '[::1]:3000'\ntrusted-proxies: [10.0.0.0/8, '::1']\n"
)
write("config_yaml", configs)
