#!/usr/bin/env python3
"""Traffic, bookkeeping and report of bench/soak.sh (a soak with faults).

    soak.py run CONFIG.json      # credentials, then mixed traffic at a fixed
                                 # rate until the end; RSS of the replicas
    soak.py report CONFIG.json   # report.md (and the plot); exit 1 on failure

bench/soak.sh writes CONFIG.json, starts `run` in the background, injects the
faults on the schedule `run` writes (schedule.tsv), and runs `report` at the
end. `run` needs only the standard library (its HTTP/1.1 client is below);
`report` needs matplotlib for the plot unless the config's "plot" is empty.

What a request is expected to get:
- a valid credential (a bearer JWT before its exp, a live service or personal
  key, a session before its end): 2xx. Anything else is an error (503 during an
  outage is the documented degraded answer, and still counts as an error);
- a credential that must not pass (a JWT past exp + clock-skew, a JWT with a
  broken signature, a revoked key once the revocation's answer is 1 s old, an
  unknown key, a session after its end or after its logout): 401 or 403 (302
  to the login counts as a refusal too). 503 counts as an error. A 2xx is a
  WRONG SUCCESS: it is logged in wrong.tsv and fails the soak.
"""

import asyncio
import bisect
import csv
import json
import math
import random
import resource
import secrets
import statistics
import sys
import time
import zlib
from collections import defaultdict
from urllib.parse import urlsplit

# ---------------------------------------------------------------- traffic mix
# Share of the requests per second (the rate is fixed). A kind without a
# credential at the moment gives its share to the others.
MIX = {
    "jwt": 24,               # bearer JWT (alice, bob, carol; renewed every 15 s)
    "service_key": 15,       # live service key
    "personal_key": 15,      # live personal key (device flow)
    "session": 20,           # live server-side session (a browser login)
    "jwt_expired": 3,        # one of our JWTs, past exp + clock-skew + 1 s
    "jwt_forged": 3,         # a live JWT with a changed signature
    "key_revoked": 6,        # revoked (admin API) at least 1 s ago
    "key_unknown": 6,        # well-formed key (right checksum) never issued
    "session_expired": 4,    # past its end (the refresh token's lifetime)
    "session_logged_out": 4, # after /oauth/logout answered
}
VALID = {"jwt", "service_key", "personal_key", "session"}
KINDS = list(MIX)

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def unknown_key():
    """A key of keygate's format with a correct CRC32, never issued."""
    body = random.choice(("kgs_", "kgp_")) + "".join(secrets.choice(BASE62) for _ in range(32))
    crc = zlib.crc32(body.encode())
    tail = []
    for _ in range(6):
        tail.append(BASE62[crc % 62])
        crc //= 62
    return body + "".join(reversed(tail))


def forge(jwt):
    """The same token with one signature character changed."""
    head, payload, sig = jwt.split(".")
    i = len(sig) // 2
    c = "A" if sig[i] != "A" else "B"
    return f"{head}.{payload}.{sig[:i]}{c}{sig[i + 1:]}"


def jwt_exp(jwt):
    import base64
    p = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))["exp"]


# ---------------------------------------------------------------- HTTP/1.1 client
class HttpError(Exception):
    pass


class Pool:
    """Keep-alive connections to one host:port, at most `size` at once."""

    def __init__(self, url, size=1024, idle=20.0):
        u = urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.hostport = f"{u.hostname}:{u.port}"
        self.idle = []          # (reader, writer, last used)
        self.sem = asyncio.Semaphore(size)
        self.idle_limit = idle

    async def request(self, method, path, headers=(), body=b"", timeout=15.0):
        """(status, headers as a list of (lower-case name, value), body).
        Raises asyncio.TimeoutError or HttpError."""
        async with self.sem:
            return await asyncio.wait_for(self._request(method, path, headers, body), timeout)

    async def _request(self, method, path, headers, body):
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.hostport}"]
        head += [f"{k}: {v}" for k, v in headers]
        if body or method == "POST":
            head.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        for attempt in (0, 1):
            conn, reused = None, False
            now = time.monotonic()
            while self.idle:
                r, w, last = self.idle.pop()
                if now - last < self.idle_limit and not r.at_eof():
                    conn, reused = (r, w), True
                    break
                w.close()
            if conn is None:
                try:
                    conn = await asyncio.open_connection(self.host, self.port)
                except OSError as e:
                    raise HttpError(f"connect: {e}") from None
            r, w = conn
            got = False
            try:
                w.write(raw)
                line = await r.readline()
                if not line:
                    raise HttpError("connection closed before the status line")
                got = True
                status, rh, rb, keep = await self._read(r, line, method)
            except (OSError, asyncio.IncompleteReadError, HttpError, ValueError) as e:
                w.close()
                # A reused connection the server closed meanwhile: once more on a new one.
                if reused and not got and attempt == 0:
                    continue
                raise HttpError(str(e) or type(e).__name__) from None
            except BaseException:
                w.close()
                raise
            if keep:
                self.idle.append((r, w, time.monotonic()))
            else:
                w.close()
            return status, rh, rb
        raise HttpError("unreachable")

    @staticmethod
    async def _read(r, line, method):
        parts = line.decode("latin-1").split(" ", 2)
        version, status = parts[0], int(parts[1])
        headers = []
        while True:
            h = await r.readline()
            if h in (b"\r\n", b"\n"):
                break
            if not h:
                raise HttpError("connection closed in the headers")
            k, _, v = h.decode("latin-1").partition(":")
            headers.append((k.strip().lower(), v.strip()))
        hd = {k: v for k, v in headers}
        keep = version == "HTTP/1.1" and hd.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return status, headers, b"", keep
        if hd.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await r.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await r.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(await r.readexactly(size))
                await r.readexactly(2)
            return status, headers, b"".join(chunks), keep
        if "content-length" in hd:
            return status, headers, await r.readexactly(int(hd["content-length"])), keep
        return status, headers, await r.read(), False


def header(headers, name):
    for k, v in headers:
        if k == name:
            return v
    return None


# ---------------------------------------------------------------- the soak
class Soak:
    def __init__(self, cfg):
        self.cfg = cfg
        self.out = cfg["work"]
        self.t0 = None
        self.lb = Pool(cfg["lb"])
        self.idp = Pool(cfg["idp"], size=16)
        self.pub = {r["name"]: Pool(r["url"], size=16) for r in cfg["replicas"]}
        self.adm = {r["name"]: Pool(r["admin"], size=16) for r in cfg["replicas"]}
        self.window = cfg["revocation_window"]
        self.skew = cfg["clock_skew"]
        self.session_ttl = cfg["session_ttl"]
        # credentials
        self.jwts = []            # [token, exp, user]
        self.expired_jwts = []    # [token, exp]
        self.service = {}         # id -> key
        self.personal = {}        # id -> key
        self.revoked = []         # [key, kind, id, answered at]
        self.sessions = []        # dict(cookie, user, start, end, ends)
        self.ended_sessions = []  # dict(cookie, why, at)
        self.schedule = []        # [(start, end, name)]
        self.inflight = 0
        self.rows = []
        self.ops = []
        self.wrong = []
        self.stop = False

    # ------------------------------------------------------------ bookkeeping
    def now(self):
        return time.time()

    def op(self, name, ok, detail="", started=None):
        t = self.now()
        self.ops.append((round(t - self.t0, 3) if self.t0 else round(t, 3), name, "ok" if ok else "fail",
                         round((t - started) * 1000, 1) if started else "", detail.replace("\t", " ")[:300]))

    async def flush_loop(self):
        with open(f"{self.out}/requests.csv", "w", newline="") as f, \
                open(f"{self.out}/ops.tsv", "w") as fo, open(f"{self.out}/wrong.tsv", "w") as fw:
            w = csv.writer(f)
            w.writerow(["t", "kind", "expect", "status", "latency_ms", "lag_ms"])
            fw.write("t\tkind\tstatus\tcredential\twhy\n")
            while True:
                rows, self.rows = self.rows, []
                w.writerows(rows)
                f.flush()
                ops, self.ops = self.ops, []
                for o in ops:
                    fo.write("\t".join(map(str, o)) + "\n")
                fo.flush()
                wrong, self.wrong = self.wrong, []
                for x in wrong:
                    fw.write("\t".join(map(str, x)) + "\n")
                fw.flush()
                if self.stop and not self.rows and not self.ops and not self.wrong:
                    return
                await asyncio.sleep(1)

    # ------------------------------------------------------------ replicas
    async def any_replica(self, pools, method, path, headers=(), body=b"", timeout=20.0):
        """Try the replicas in a random order until one answers (a killed one does not)."""
        names = list(pools)
        random.shuffle(names)
        last = None
        for n in names:
            try:
                return n, await pools[n].request(method, path, headers, body, timeout)
            except HttpError as e:
                last = e
        raise HttpError(f"no replica answered: {last}")

    # ------------------------------------------------------------ credentials
    async def password_grant(self, user):
        body = (f"grant_type=password&username={user}&password={user}"
                "&client_id=keygate&client_secret=keygate-secret&scope=openid").encode()
        st, _, b = await self.idp.request("POST", self.cfg["token_path"],
                                          [("Content-Type", "application/x-www-form-urlencoded")], body, timeout=10)
        if st != 200:
            raise HttpError(f"password grant for {user}: {st} {b[:200]!r}")
        tok = json.loads(b)["access_token"]
        return tok, jwt_exp(tok)

    async def renew_jwts(self):
        for user in ("alice", "bob", "carol"):
            t = self.now()
            try:
                tok, exp = await self.password_grant(user)
                self.jwts.append([tok, exp, user])
                self.op("jwt", True, user, t)
            except (HttpError, asyncio.TimeoutError) as e:
                self.op("jwt", False, f"{user}: {e}", t)
        now = self.now()
        keep = []
        for j in self.jwts:
            if j[1] > now:
                keep.append(j)
            else:
                self.expired_jwts.append([j[0], j[1]])
        self.jwts = keep[-12:]
        self.expired_jwts = self.expired_jwts[-20:]

    def admin_token(self):
        alice = [j for j in self.jwts if j[2] == "alice" and j[1] - self.now() > 15]
        return alice[-1][0] if alice else None

    async def create_service_key(self):
        t = self.now()
        tok = self.admin_token()
        if not tok:
            self.op("create service key", False, "no admin token")
            return
        body = json.dumps({"client_id": "svc-reporting", "client_secret": "svc-reporting-secret",
                           "description": "soak", "expires_in": "1d"}).encode()
        try:
            n, (st, _, b) = await self.any_replica(
                self.adm, "POST", "/admin/v1/keys",
                [("Authorization", f"Bearer {tok}"), ("Content-Type", "application/json")], body)
        except (HttpError, asyncio.TimeoutError) as e:
            self.op("create service key", False, str(e), t)
            return
        if st == 201:
            k = json.loads(b)
            self.service[k["id"]] = k["key"]
            self.op("create service key", True, f"{n} {k['id']}", t)
        else:
            self.op("create service key", False, f"{n} {st} {b[:200]!r}", t)

    async def create_personal_key(self, user):
        t = self.now()
        body = json.dumps({"description": "soak", "expires_in": "1d"}).encode()
        try:
            n, (st, _, b) = await self.any_replica(self.pub, "POST", "/oauth/keys/device",
                                                   [("Content-Type", "application/json")], body)
            if st != 200:
                raise HttpError(f"{n}: device start {st} {b[:200]!r}")
            flow = json.loads(b)
            proc = await asyncio.create_subprocess_exec(
                "node", "bench/login.mjs", "--device", flow["verification_uri_complete"], "--user", user,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                _, err = await asyncio.wait_for(proc.communicate(), 30)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                raise HttpError("device approval timed out") from None
            if proc.returncode != 0:
                raise HttpError(f"device approval: {err.decode()[:300]}")
            poll = json.dumps({"flow_id": flow["flow_id"]}).encode()
            for _ in range(10):
                st, _, b = await self.pub[n].request("POST", "/oauth/keys/device/token",
                                                     [("Content-Type", "application/json")], poll, timeout=20)
                if st == 201:
                    k = json.loads(b)
                    self.personal[k["id"]] = k["key"]
                    self.op("create personal key", True, f"{n} {user} {k['id']}", t)
                    return
                if st != 202:
                    raise HttpError(f"{n}: device token {st} {b[:200]!r}")
                await asyncio.sleep(json.loads(b).get("interval", 2))
            raise HttpError(f"{n}: still pending")
        except (HttpError, asyncio.TimeoutError, OSError) as e:
            self.op("create personal key", False, str(e), t)

    def fault_soon(self, names, within):
        now = self.now()
        return any(s - within <= now < e for s, e, name in self.schedule if name in names)

    async def revoke(self, kind):
        pool = self.service if kind == "service" else self.personal
        if len(pool) <= 3:
            return
        # A revocation committed just before PostgreSQL stops may reach the
        # replicas only when it resumes; meanwhile they keep serving the keys
        # they hold a token for (docs/scaling.md, "While a replica cannot
        # reach the store"). That is documented, so no revocation starts
        # within 2 s of a PostgreSQL fault.
        if self.fault_soon({"postgres hang", "postgres kill"}, 2.0):
            return
        tok = self.admin_token()
        if not tok:
            return
        kid = random.choice(list(pool))
        key = pool.pop(kid)   # not used from now on, whatever the answer
        t = self.now()
        try:
            n, (st, _, b) = await self.any_replica(
                self.adm, "POST", f"/admin/v1/keys/{kid}/revoke", [("Authorization", f"Bearer {tok}")])
        except (HttpError, asyncio.TimeoutError) as e:
            self.op(f"revoke {kind} key", False, f"{kid}: {e} (key retired)", t)
            return
        if st == 200:
            self.revoked.append([key, kind, kid, self.now()])
            self.revoked = self.revoked[-60:]
            self.op(f"revoke {kind} key", True, f"{n} {kid}", t)
        else:
            self.op(f"revoke {kind} key", False, f"{n} {kid}: {st} {b[:200]!r} (key retired)", t)

    async def login(self, user):
        t = self.now()
        proc = await asyncio.create_subprocess_exec(
            "node", "bench/login.mjs", self.cfg["lb"], "--user", user,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            self.op("login", False, f"{user}: timed out", t)
            return
        end = self.now()
        if proc.returncode != 0:
            self.op("login", False, f"{user}: {err.decode()[:300]}", t)
            return
        # keygate sets the session's end at its callback (between t and end)
        # plus the refresh token's lifetime; Redis drops it then.
        self.sessions.append({"cookie": out.decode().strip(), "user": user, "start": t, "end": end,
                              "valid_until": t + self.session_ttl - 3,
                              "ends": end + self.session_ttl + 2})
        self.op("login", True, user, t)

    async def logout(self):
        now = self.now()
        cands = [s for s in self.sessions if s["valid_until"] - now > 10 and now - s["end"] > 5]
        if not cands:
            return
        s = random.choice(cands)
        self.sessions.remove(s)   # not used as a live session from now on
        t = self.now()
        try:
            st, h, b = await self.lb.request("GET", "/oauth/logout", [("Cookie", s["cookie"])], timeout=20)
        except (HttpError, asyncio.TimeoutError) as e:
            self.op("logout", False, f"{e} (session retired)", t)
            return
        if st in (302, 303):
            self.ended_sessions.append({"cookie": s["cookie"], "why": "logged out", "at": self.now()})
            self.op("logout", True, s["user"], t)
        else:
            self.op("logout", False, f"{st} {b[:200]!r} (session retired)", t)

    def sweep_sessions(self):
        now = self.now()
        live = []
        for s in self.sessions:
            if s["valid_until"] > now:
                live.append(s)
            else:   # no longer used as live; refused once past its end
                self.ended_sessions.append({"cookie": s["cookie"], "why": "expired", "at": s["ends"]})
        self.sessions = live
        self.ended_sessions = [e for e in self.ended_sessions if now - e["at"] < 600][-80:]

    async def every(self, period, fn, *args):
        """Run fn every `period` seconds (first after a random part of it) until the end."""
        await asyncio.sleep(random.uniform(0, period))
        while not self.stop:
            try:
                await fn(*args)
            except Exception as e:  # noqa: BLE001 - a failed operation must not stop the soak
                self.op(getattr(fn, "__name__", "op"), False, f"{type(e).__name__}: {e}")
            await asyncio.sleep(period)

    # ------------------------------------------------------------ picking a request
    def pick(self):
        now = self.now()
        avail = {}
        jwts = [j for j in self.jwts if j[1] - now > 10]
        if jwts:
            avail["jwt"] = lambda: ("Authorization", f"Bearer {random.choice(jwts)[0]}", "")
            avail["jwt_forged"] = lambda: ("Authorization", f"Bearer {forge(random.choice(jwts)[0])}",
                                           "signature changed")
        expired = [j for j in self.expired_jwts if now > j[1] + self.skew + 1]
        if expired:
            def _exp():
                j = random.choice(expired)
                return "Authorization", f"Bearer {j[0]}", f"exp {j[1]:.0f}, {now - j[1]:.1f} s ago"
            avail["jwt_expired"] = _exp
        if self.service:
            avail["service_key"] = lambda: ("X-API-Key", random.choice(list(self.service.values())), "")
        if self.personal:
            avail["personal_key"] = lambda: ("X-API-Key", random.choice(list(self.personal.values())), "")
        revoked = [r for r in self.revoked if now > r[3] + self.window]
        if revoked:
            def _rev():
                r = random.choice(revoked)
                return "X-API-Key", r[0], f"{r[1]} key {r[2]} revoked {now - r[3]:.1f} s before"
            avail["key_revoked"] = _rev
        avail["key_unknown"] = lambda: ("X-API-Key", unknown_key(), "never issued")
        live = [s for s in self.sessions if s["valid_until"] > now and s["end"] <= now]
        if live:
            avail["session"] = lambda: ("Cookie", random.choice(live)["cookie"], "")
        for why, kind in (("expired", "session_expired"), ("logged out", "session_logged_out")):
            ended = [e for e in self.ended_sessions if e["why"] == why and now > e["at"]]
            if ended:
                def _ended(ended=ended, why=why):
                    e = random.choice(ended)
                    return "Cookie", e["cookie"], f"session {why} {now - e['at']:.1f} s before"
                avail[kind] = _ended
        kinds = list(avail)
        kind = random.choices(kinds, weights=[MIX[k] for k in kinds])[0]
        name, value, why = avail[kind]()
        return kind, name, value, why

    async def one(self, sched, kind, hname, hvalue, why):
        sent = time.time()
        self.inflight += 1
        try:
            st, _, _ = await self.lb.request("GET", "/soak", [(hname, hvalue), ("Accept", "application/json")],
                                             timeout=self.cfg["client_timeout"])
        except asyncio.TimeoutError:
            st = 0
        except HttpError:
            st = -1
        finally:
            self.inflight -= 1
        done = time.time()
        expect = "ok" if kind in VALID else "refused"
        self.rows.append((round(sched - self.t0, 3), kind, expect, st, round((done - sched) * 1000, 2),
                          round((sent - sched) * 1000, 2)))
        if expect == "refused" and 200 <= st < 300:
            cred = hvalue if hname != "Cookie" else hvalue[:60] + "…"
            if hname == "Authorization":
                cred = hvalue[:40] + "…"
            self.wrong.append((round(sched - self.t0, 3), kind, st, cred, why))

    async def traffic(self, end):
        rate = self.cfg["rate"]
        i = 0
        while True:
            sched = self.t0 + i / rate
            if sched >= end:
                break
            delay = sched - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.inflight >= self.cfg["max_inflight"]:
                self.rows.append((round(sched - self.t0, 3), "dropped", "ok", -2, 0, 0))
            else:
                kind, hname, hvalue, why = self.pick()
                asyncio.ensure_future(self.one(sched, kind, hname, hvalue, why))
            i += 1

    async def rss_loop(self, end):
        with open(f"{self.out}/rss.csv", "w") as f:
            f.write("t,replica,pid,rss_kib\n")
            while time.time() < end:
                t = time.time() - self.t0
                for r in self.cfg["replicas"]:
                    try:
                        pid = int(open(r["pidfile"]).read())
                        with open(f"/proc/{pid}/status") as s:
                            rss = next(int(line.split()[1]) for line in s if line.startswith("VmRSS:"))
                        f.write(f"{t:.2f},{r['name']},{pid},{rss}\n")
                    except (OSError, ValueError, StopIteration):
                        pass
                f.flush()
                await asyncio.sleep(1 - (time.time() - self.t0) % 1)

    def write_schedule(self):
        """Faults one at a time: a baseline of a tenth of the run, then one
        slot per fault, each fault lasting a third of its slot (at most 30 s),
        the rest quiet."""
        faults = self.cfg["faults"]
        dur = self.cfg["duration"]
        base = dur / 10
        slot = (dur - base) / len(faults)
        length = min(self.cfg["fault_max"], slot / 3)
        with open(f"{self.out}/schedule.tsv", "w") as f:
            for i, name in enumerate(faults):
                s = self.t0 + base + i * slot
                self.schedule.append((s, s + length, name))
                f.write(f"{s:.3f}\t{s + length:.3f}\t{name}\n")

    async def run(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        # Credentials before the clock starts.
        await self.renew_jwts()
        if not self.jwts:
            sys.exit("soak.py: no JWT from the provider")
        st, _, b = await self.idp.request("POST", "/admin/sign", [("Content-Type", "application/json")],
                                          json.dumps({"claims": {"exp": int(time.time()) - 3600,
                                                                 "iat": int(time.time()) - 3700}}).encode())
        if st == 200:   # signed by the provider's key, long expired
            self.expired_jwts.append([json.loads(b)["token"], int(time.time()) - 3600])
        for _ in range(4):
            await self.create_service_key()
        for user in ("alice", "bob", "alice", "bob"):
            await self.create_personal_key(user)
        for user in ("alice", "bob", "carol"):
            await self.login(user)
        if len(self.service) < 2 or len(self.personal) < 2 or not self.sessions:
            sys.exit(f"soak.py: could not set up the credentials (see {self.out}/ops.tsv): "
                     f"{len(self.service)} service keys, {len(self.personal)} personal keys, "
                     f"{len(self.sessions)} sessions; {self.ops[-3:]}")
        self.t0 = math.ceil(time.time()) + 1
        end = self.t0 + self.cfg["duration"]
        self.write_schedule()
        with open(f"{self.out}/t0", "w") as f:
            f.write(f"{self.t0}\n")
        await asyncio.sleep(self.t0 - time.time())
        flusher = asyncio.ensure_future(self.flush_loop())
        p = self.cfg["periods"]
        background = [
            asyncio.ensure_future(self.every(p["jwt"], self.renew_jwts)),
            asyncio.ensure_future(self.every(p["login"], self.login_next)),
            asyncio.ensure_future(self.every(p["logout"], self.logout)),
            asyncio.ensure_future(self.every(p["service_key"], self.create_service_key)),
            asyncio.ensure_future(self.every(p["personal_key"], self.personal_next)),
            asyncio.ensure_future(self.every(p["revoke"], self.revoke_next)),
            asyncio.ensure_future(self.every(1, self.sweep)),
            asyncio.ensure_future(self.rss_loop(end)),
        ]
        await self.traffic(end)
        self.stop = True
        # Requests still in flight get their client timeout to finish.
        deadline = time.time() + self.cfg["client_timeout"] + 2
        while self.inflight and time.time() < deadline:
            await asyncio.sleep(0.2)
        for b in background:
            b.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await flusher

    _users = ["alice", "bob", "carol"]
    _n = 0

    async def login_next(self):
        self._n += 1
        await self.login(self._users[self._n % 3])

    async def personal_next(self):
        self._n += 1
        await self.create_personal_key(("alice", "bob")[self._n % 2])

    _rk = 0

    async def revoke_next(self):
        self._rk += 1
        await self.revoke(("service", "personal")[self._rk % 2])

    async def sweep(self):
        self.sweep_sessions()


# ---------------------------------------------------------------- report
def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = max(0, min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1))
    return values[k]


def linfit(points):
    """Least-squares slope (per second) of (t, y) points."""
    if len(points) < 10:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / den if den else float("nan")


def pooled_slope(segments):
    """Least-squares slope (per second) common to several stretches of
    (t, y) points, each with its own level: steps between them do not count."""
    num = den = 0.0
    for seg in segments:
        n = len(seg)
        mt = sum(t for t, _ in seg) / n
        my = sum(y for _, y in seg) / n
        num += sum((t - mt) * (y - my) for t, y in seg)
        den += sum((t - mt) ** 2 for t, _ in seg)
    return num / den if den else float("nan")


def report(cfg):
    out = cfg["work"]
    t0 = float(open(f"{out}/t0").read())
    dur = cfg["duration"]
    nsec = int(math.ceil(dur))
    # ---- requests, per second
    sec_n = [0] * nsec
    sec_err = [0] * nsec
    sec_lat = [[] for _ in range(nsec)]
    lags = []
    totals = defaultdict(lambda: defaultdict(int))   # kind -> outcome -> n
    kind_sec = defaultdict(lambda: [[0, 0] for _ in range(nsec)])   # kind -> sec -> [n, err]
    rows = []
    with open(f"{out}/requests.csv") as f:
        for r in csv.DictReader(f):
            t = float(r["t"])
            s = int(t)
            if not 0 <= s < nsec:
                continue
            st = int(r["status"])
            lat = float(r["latency_ms"])
            kind, expect = r["kind"], r["expect"]
            if expect == "ok":
                outcome = "ok" if 200 <= st < 300 else "error"
            else:
                outcome = "ok" if st in (401, 403, 302) else ("WRONG" if 200 <= st < 300 else "error")
            err = outcome == "error"
            label = {0: "timeout", -1: "connection error", -2: "not sent (client in-flight bound)"}.get(st, str(st))
            totals[kind][outcome if outcome != "error" else f"error {label}"] += 1
            sec_n[s] += 1
            sec_err[s] += err
            sec_lat[s].append(lat)
            kind_sec[kind][s][0] += 1
            kind_sec[kind][s][1] += err
            lags.append(float(r["lag_ms"]))
            rows.append((t, lat, err))
    wrong = []
    with open(f"{out}/wrong.tsv") as f:
        next(f)
        wrong = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    # ---- faults: planned windows and what the script did when
    events = defaultdict(dict)   # fault -> phase -> epoch
    with open(f"{out}/events.tsv") as f:
        for line in f:
            ts, name, phase = line.rstrip("\n").split("\t")[:3]
            events[name][phase] = float(ts) - t0
    faults = []
    with open(f"{out}/schedule.tsv") as f:
        for line in f:
            s, e, name = line.rstrip("\n").split("\t")
            ev = events.get(name, {})
            faults.append({"name": name, "start": ev.get("start", float(s) - t0),
                           "end": ev.get("end", float(e) - t0), "ready": ev.get("ready")})
    first = faults[0]["start"] if faults else dur
    warm = min(10.0, first / 3)
    base_secs = [s for s in range(int(warm), int(first))]
    bn = sum(sec_n[s] for s in base_secs)
    be = sum(sec_err[s] for s in base_secs)
    base_rate = be / bn if bn else 0.0
    threshold = max(0.01, 3 * base_rate)

    rows.sort()
    times = [r[0] for r in rows]

    def window(a, b):
        sel = rows[bisect.bisect_left(times, a):bisect.bisect_left(times, b)]
        return len(sel), sum(err for _, _, err in sel), pct([lat for _, lat, _ in sel], 99)

    for i, fl in enumerate(faults):
        nxt = faults[i + 1]["start"] if i + 1 < len(faults) else dur
        fl["quiet_end"] = nxt
        bad = [s for s in range(int(fl["end"]), int(nxt)) if sec_n[s] and sec_err[s] / sec_n[s] > threshold]
        last_bad = max(bad) + 1 if bad else None
        fl["recovery"] = max(0.0, last_bad - fl["end"]) if last_bad else 0.0
        # Still above the threshold in the last 10 s before the next fault: not recovered.
        fl["recovered"] = not any(s >= nxt - 10 for s in bad)
        fl["during"] = window(fl["start"], fl["end"])
        fl["after"] = window(fl["end"], fl["end"] + max(fl["recovery"], 1.0))
        fl["quiet"] = window(fl["end"], nxt)
        kinds = []
        for k in KINDS:
            n = sum(kind_sec[k][s][0] for s in range(int(fl["start"]), min(nsec, int(fl["end"] + fl["recovery"]) + 1)))
            e = sum(kind_sec[k][s][1] for s in range(int(fl["start"]), min(nsec, int(fl["end"] + fl["recovery"]) + 1)))
            if n and e:
                kinds.append(f"{k} {100 * e / n:.0f}%")
        fl["kinds"] = ", ".join(kinds) or "none"
    # ---- RSS
    rss = defaultdict(list)   # replica -> [(t, pid, kib)]
    with open(f"{out}/rss.csv") as f:
        for r in csv.DictReader(f):
            rss[r["replica"]].append((float(r["t"]), int(r["pid"]), int(r["rss_kib"])))
    limit = cfg["rss_slope_limit"]   # MiB per hour
    # Quiet stretches: the baseline after its first minute, and each quiet
    # period from 30 s after its fault ended (or from its middle, if shorter)
    # to the next fault. A fault may leave a step in RSS (the requests it
    # held in flight); steady growth is growth while nothing happens.
    quiet = [(min(60.0, first / 2), first)]
    for fl in faults:
        quiet.append((fl["end"] + min(30.0, (fl["quiet_end"] - fl["end"]) / 2), fl["quiet_end"]))
    rss_rows = []
    growth = []
    steps = []   # (label, {replica: MiB at the end of that quiet stretch})
    for name in sorted(rss):
        pts = rss[name]
        last_pid = pts[-1][1]
        born = min(t for t, pid, _ in pts if pid == last_pid)
        restarted = born > 5
        lo = max(dur / 3, born + 60 if restarted else 0)
        segs = []
        for a, b in quiet:
            seg = [(t, k / 1024) for t, pid, k in pts if pid == last_pid and max(a, lo) <= t < b]
            if len(seg) >= 5:
                segs.append(seg)
        slope = pooled_slope(segs) * 3600
        overall = linfit([(t, k / 1024) for t, pid, k in pts if pid == last_pid and t >= lo]) * 3600
        grows = slope > limit
        if grows:
            growth.append(name)
        mibs = [k / 1024 for _, _, k in pts]
        rss_rows.append((name, min(mibs), max(mibs), pts[-1][2] / 1024, slope, overall,
                         sum(len(x) for x in segs), len(segs), restarted, born, grows))
    labels = ["baseline"] + [f"after {fl['name']}" for fl in faults]
    for (a, b), label in zip(quiet, labels):
        row = {}
        for name in sorted(rss):
            end = [k / 1024 for t, _, k in rss[name] if b - 10 <= t < b]
            row[name] = statistics.median(end) if end else float("nan")
        steps.append((label, row))
    # ---- operations
    ops = defaultdict(lambda: [0, 0])
    with open(f"{out}/ops.tsv") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) >= 3 and float(p[0]) < 1e8:   # setup operations carry the epoch instead
                ops[p[1]][0 if p[2] == "ok" else 1] += 1
    # ---- verdict
    not_recovered = [fl["name"] for fl in faults if not fl["recovered"]]
    failed = bool(wrong) or bool(growth) or bool(not_recovered)
    total = sum(sec_n)
    allerr = sum(sec_err)
    meta = cfg.get("meta", {})

    L = []
    L.append(f"{meta.get('command', 'bench/soak.sh')}: {dur / 60:.0f} min, {cfg['rate']} requests/s "
             f"(fixed rate, open loop), {total} requests; keygate {meta.get('commit', '?')}; "
             f"run started {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t0))} UTC. "
             f"Load average before/after: {meta.get('load_before', '?')} / {meta.get('load_after', '?')}.")
    L.append("")
    L.append(f"**Verdict: {'FAILED' if failed else 'passed'}** — wrong successes: **{len(wrong)}**; "
             f"replicas whose memory grew steadily: **{', '.join(growth) or 'none'}**; "
             f"faults not recovered from: **{', '.join(not_recovered) or 'none'}**.")
    L.append("")
    L.append(f"Baseline (before the first fault, after {warm:.0f} s of warm-up): error rate "
             f"{100 * base_rate:.2f}% ({be} of {bn}); a second counts as recovered when its error rate is at "
             f"most {100 * threshold:.1f}% (the larger of 1% and 3× the baseline). Time to recover: from the end "
             f"of the fault (SIGCONT, or the restart of the killed process) to the end of the last second above "
             f"that, before the next fault (1 s resolution). Latency is measured from the moment the "
             f"request was due (so a client-side wait counts), up to the client's {cfg['client_timeout']} s timeout.")
    L.append("")
    L.append("| fault | window (s from start) | error rate during | p99 during (ms) | time to recover (s) | error rate, recovery | p99, recovery (ms) | error rate, rest of quiet period | errors by credential (fault + recovery) |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for fl in faults:
        dn, de, dp = fl["during"]
        an, ae, ap = fl["after"]
        qn, qe, _ = fl["quiet"]
        rest_n, rest_e = qn - an, qe - ae
        ready = f", up after {fl['ready'] - fl['end']:.1f} s" if fl.get("ready") is not None else ""
        rec = "**not recovered**" if not fl["recovered"] else f"{fl['recovery']:.0f}"
        L.append(f"| {fl['name']} | {fl['start']:.0f}–{fl['end']:.0f}{ready} | {100 * de / dn if dn else 0:.1f}% | "
                 f"{dp:.1f} | {rec} | "
                 f"{100 * ae / an if an else 0:.1f}% | {ap:.1f} | "
                 f"{100 * rest_e / rest_n if rest_n else 0:.2f}% | {fl['kinds']} |")
    L.append("")
    L.append(f"All requests: {allerr} errors of {total} ({100 * allerr / total if total else 0:.2f}%); "
             f"p50 {pct([x for s in sec_lat for x in s], 50):.2f} ms, p99 {pct([x for s in sec_lat for x in s], 99):.2f} ms. "
             f"The client's own delay in sending (event-loop lag): p99 {pct(lags, 99):.1f} ms, max {max(lags) if lags else 0:.0f} ms.")
    L.append("")
    L.append("Requests by credential and outcome (whole run):")
    L.append("")
    L.append("| credential | expected | requests | as expected | wrong successes | errors (by answer) |")
    L.append("|---|---|---:|---:|---:|---|")
    for k in KINDS + ["dropped"]:
        if k not in totals:
            continue
        o = totals[k]
        n = sum(o.values())
        errs = ", ".join(f"{lab[6:]} {v}" for lab, v in sorted(o.items(), key=lambda x: -x[1]) if lab.startswith("error"))
        L.append(f"| {k} | {'2xx' if k in VALID or k == 'dropped' else '401/403'} | {n} | {o.get('ok', 0)} | "
                 f"{o.get('WRONG', 0)} | {errs or '–'} |")
    L.append("")
    if wrong:
        L.append(f"**Wrong successes** ({len(wrong)}; first 20, from wrong.tsv):")
        L.append("")
        for w in wrong[:20]:
            L.append(f"- t={w[0]} s {w[1]} → {w[2]}: {w[4]} ({w[3]})")
        L.append("")
    L.append(f"Operations during the run (ok / failed): "
             + "; ".join(f"{k} {v[0]} / {v[1]}" for k, v in sorted(ops.items())) + ".")
    L.append("")
    L.append(f"Replicas' RSS (VmRSS every second). Steady growth = the least-squares slope of RSS while "
             f"nothing happens — within the quiet stretches (from 30 s after each fault to the next one) of the "
             f"last two thirds of the run, each stretch with its own level, so that a step a fault leaves "
             f"behind does not count — above {limit:g} MiB/hour (for a restarted replica, from 60 s after "
             f"its restart). The plain slope over the same time, steps included, is shown for comparison.")
    L.append("")
    L.append("| replica | RSS min (MiB) | max (MiB) | at the end (MiB) | slope while quiet (MiB/h) | slope with the steps (MiB/h) | samples (stretches) | grows steadily |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, mn, mx, last, slope, overall, n, nseg, restarted, born, grows in rss_rows:
        note = f" (restarted at {born:.0f} s)" if restarted else ""
        fmt = lambda v: "n/a" if math.isnan(v) else f"{v:+.2f}"   # noqa: E731
        L.append(f"| {name}{note} | {mn:.1f} | {mx:.1f} | {last:.1f} | {fmt(slope)} | {fmt(overall)} | "
                 f"{n} ({nseg}) | {'**yes**' if grows else 'no'} |")
    L.append("")
    names = sorted(rss)
    L.append("RSS (MiB, median of the last 10 s) at the end of each quiet stretch:")
    L.append("")
    L.append("| | " + " | ".join(names) + " |")
    L.append("|---|" + "---:|" * len(names))
    for label, row in steps:
        L.append(f"| {label} | " + " | ".join(f"{row[n]:.1f}" for n in names) + " |")
    L.append("")
    L.extend(metrics(cfg))
    text = "\n".join(L)

    if cfg.get("plot"):
        plot(cfg, t0, faults, sec_n, sec_err, sec_lat, rss, wrong)
    return text, failed


def metrics(cfg):
    """What each replica's /metrics said at the end (a restarted replica: since its restart)."""
    sums = defaultdict(float)
    seen = False
    for r in cfg["replicas"]:
        try:
            text = open(f"{cfg['work']}/metrics-{r['name']}.txt").read()
        except OSError:
            continue
        seen = True
        for line in text.splitlines():
            for name in ("keygate_dependency_probes_total", "keygate_dependency_fail_fast_total",
                         "keygate_requests_shed_total"):
                if line.startswith(name):
                    key, _, value = line.rpartition(" ")
                    sums[key] += float(value)
    if not seen:
        return []
    items = "; ".join(f"`{k}` {v:.0f}" for k, v in sorted(sums.items()))
    return [f"Breakers and shedding, summed over the replicas' `/metrics` at the end: {items or 'none'}.", ""]


def plot(cfg, t0, faults, sec_n, sec_err, sec_lat, rss, wrong):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mins = [s / 60 for s in range(len(sec_n))]
    p50 = [statistics.median(x) if x else float("nan") for x in sec_lat]
    p99 = [pct(x, 99) for x in sec_lat]
    errp = [100 * e / n if n else float("nan") for n, e in zip(sec_n, sec_err)]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(12, 9), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 2, 2]})
    ax1.plot(mins, p99, lw=0.8, color="tab:red", label="p99")
    ax1.plot(mins, p50, lw=0.8, color="tab:blue", label="p50")
    ax1.set_yscale("log")
    ax1.set_ylabel("latency per second (ms)")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.plot(mins, errp, lw=0.8, color="black")
    ax2.set_ylabel("errors (% of requests)")
    ax2.set_ylim(-2, 102)
    if wrong:
        ax2.scatter([float(w[0]) / 60 for w in wrong], [100] * len(wrong), color="red", marker="x",
                    label="wrong success", zorder=5)
        ax2.legend(loc="upper right", fontsize=8)
    for i, name in enumerate(sorted(rss)):
        pids = list(dict.fromkeys(pid for _, pid, _ in rss[name]))   # a restarted replica: one line per process
        for j, pid in enumerate(pids):
            pts = [(t, k) for t, p, k in rss[name] if p == pid]
            ax3.plot([t / 60 for t, _ in pts], [k / 1024 for _, k in pts], lw=0.9, color=f"C{i}",
                     label=name if j == 0 else None)
    ax3.set_ylabel("RSS (MiB)")
    ax3.set_xlabel("minutes since the start of the traffic")
    ax3.legend(loc="lower right", fontsize=8)
    lo, hi = ax3.get_ylim()
    ax3.set_ylim(0, hi * 1.15)
    colors = {"hang": "tab:orange", "kill": "tab:purple"}
    for fl in faults:
        c = colors["hang" if "hang" in fl["name"] else "kill"]
        for ax in (ax1, ax2, ax3):
            ax.axvspan(fl["start"] / 60, fl["end"] / 60, color=c, alpha=0.18, lw=0)
        ax1.annotate(fl["name"], xy=(fl["start"] / 60, 1.0), xycoords=("data", "axes fraction"),
                     rotation=90, va="top", ha="right", fontsize=7)
    ax1.set_title(f"keygate soak: 3 replicas, {cfg['rate']} req/s; shaded: faults "
                  f"(orange = SIGSTOP … SIGCONT, purple = SIGKILL … restart)", fontsize=10)
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(cfg["plot"], dpi=110)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("run", "report"):
        sys.exit(__doc__)
    cfg = json.load(open(sys.argv[2]))
    if sys.argv[1] == "run":
        asyncio.run(Soak(cfg).run())
        return
    text, failed = report(cfg)
    with open(f"{cfg['work']}/report.md", "w") as f:
        f.write(text + "\n")
    print(text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
