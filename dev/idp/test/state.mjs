// --state-file and --offline-token-ttl: node --test dev/idp/test/
// A provider killed with SIGKILL and started again on the same port with the
// same state file keeps its signing keys and its refresh tokens (bench/soak.sh
// kills and restarts the provider that way).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const serverJs = path.join(here, '..', 'server.js');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idp-state-'));
const stateFile = path.join(dir, 'state.jsonl');
const children = new Set();

after(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

async function start(port) {
  const child = spawn(process.execPath, [serverJs, '--port', String(port), '--state-file', stateFile,
    '--refresh-token-ttl', '60', '--offline-token-ttl', '3600'], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  let out = '';
  const issuer = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no READY line; stderr: ${stderr}`)), 15000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/^IDP READY issuer=(\S+)\n/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    child.on('exit', (code) => reject(new Error(`exited ${code}; stderr: ${stderr}`)));
  });
  return { child, issuer };
}

async function token(issuer, params) {
  const res = await fetch(`${issuer}/protocol/openid-connect/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ client_id: 'keygate', client_secret: 'keygate-secret', ...params }),
  });
  return { status: res.status, body: await res.json() };
}

const kids = async (issuer) => (await (await fetch(`${issuer}/protocol/openid-connect/certs`)).json())
  .keys.map((k) => k.kid);

test('keys and refresh tokens survive a SIGKILL; offline tokens get their own lifetime', async () => {
  const first = await start(0);
  const port = new URL(first.issuer).port;
  const online = await token(first.issuer, { grant_type: 'password', username: 'alice', password: 'alice', scope: 'openid' });
  assert.equal(online.status, 200, JSON.stringify(online.body));
  assert.equal(online.body.refresh_expires_in, 60);
  const offline = await token(first.issuer, {
    grant_type: 'password', username: 'bob', password: 'bob', scope: 'openid offline_access',
  });
  assert.equal(offline.status, 200, JSON.stringify(offline.body));
  assert.equal(offline.body.refresh_expires_in, 3600);
  const before = await kids(first.issuer);

  first.child.kill('SIGKILL');
  await once(first.child, 'exit');
  const second = await start(port);
  assert.equal(second.issuer, first.issuer);
  assert.deepEqual(await kids(second.issuer), before, 'the same signing keys');
  for (const rt of [online.body.refresh_token, offline.body.refresh_token]) {
    const refreshed = await token(second.issuer, { grant_type: 'refresh_token', refresh_token: rt });
    assert.equal(refreshed.status, 200, JSON.stringify(refreshed.body));
  }
  const [, payload] = offline.body.access_token.split('.');
  assert.equal(JSON.parse(Buffer.from(payload, 'base64url')).preferred_username, 'bob');

  // A revoked refresh token stays revoked across a restart too.
  const revoke = await fetch(`${second.issuer}/protocol/openid-connect/revoke`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      client_id: 'keygate', client_secret: 'keygate-secret', token: online.body.refresh_token, token_type_hint: 'refresh_token',
    }),
  });
  assert.equal(revoke.status, 200);
  second.child.kill('SIGKILL');
  await once(second.child, 'exit');
  const third = await start(port);
  const refused = await token(third.issuer, { grant_type: 'refresh_token', refresh_token: online.body.refresh_token });
  assert.equal(refused.status, 400, JSON.stringify(refused.body));
  const still = await token(third.issuer, { grant_type: 'refresh_token', refresh_token: offline.body.refresh_token });
  assert.equal(still.status, 200, JSON.stringify(still.body));
  third.child.kill('SIGTERM');
  await once(third.child, 'exit');
});
