// Smoke test for the dev IdP: node --test dev/idp/test/
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import * as jose from 'jose';

const here = path.dirname(fileURLToPath(import.meta.url));
const serverJs = path.join(here, '..', 'server.js');

let child;
let issuer;
let origin;
let tokenUrl;

before(async () => {
  child = spawn(process.execPath, [serverJs, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  let out = '';
  const line = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no READY line; stderr: ${stderr}`)), 15000);
    child.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) { clearTimeout(timer); resolve(out.slice(0, nl)); }
    });
    child.on('exit', (code) => reject(new Error(`exited ${code}; stderr: ${stderr}`)));
  });
  const m = line.match(/^IDP READY issuer=(http:\/\/127\.0\.0\.1:\d+\/realms\/acme)$/);
  assert.ok(m, `bad READY line: ${line}`);
  [, issuer] = m;
  origin = new URL(issuer).origin;
  tokenUrl = `${issuer}/protocol/openid-connect/token`;
});

after(async () => {
  if (child && child.exitCode === null) {
    child.kill('SIGTERM');
    const [code] = await once(child, 'exit');
    assert.equal(code, 0);
  }
});

const decode = (jwt) => {
  const [h, p] = jwt.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url')),
    payload: JSON.parse(Buffer.from(p, 'base64url')),
  };
};

async function form(url, params, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(params),
  });
  return { status: res.status, body: await res.json() };
}

async function json(method, urlPath, body) {
  const res = await fetch(`${origin}${urlPath}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: await res.json() };
}

const passwordGrant = (username, password, extra = {}) => form(tokenUrl, {
  grant_type: 'password', username, password, client_id: 'keygate', client_secret: 'keygate-secret', ...extra,
});

async function verify(token) {
  const jwks = jose.createLocalJWKSet(await (await fetch(`${issuer}/protocol/openid-connect/certs`)).json());
  return jose.jwtVerify(token, jwks, { issuer });
}

test('discovery document', async () => {
  const res = await fetch(`${issuer}/.well-known/openid-configuration`);
  assert.equal(res.status, 200);
  const d = await res.json();
  const p = `${issuer}/protocol/openid-connect`;
  assert.equal(d.issuer, issuer);
  assert.equal(d.authorization_endpoint, `${p}/auth`);
  assert.equal(d.token_endpoint, `${p}/token`);
  assert.equal(d.jwks_uri, `${p}/certs`);
  assert.equal(d.userinfo_endpoint, `${p}/userinfo`);
  assert.equal(d.end_session_endpoint, `${p}/logout`);
  assert.equal(d.revocation_endpoint, `${p}/revoke`);
  assert.equal(d.introspection_endpoint, `${p}/token/introspect`);
  assert.equal(d.device_authorization_endpoint, `${p}/auth/device`);
  assert.ok(d.grant_types_supported.includes('password'));
});

test('health', async () => {
  assert.deepEqual(await json('GET', '/admin/health'), { status: 200, body: { ok: true } });
});

test('password grant: Keycloak-shaped JWT for alice, verifies against JWKS', async () => {
  const { status, body } = await passwordGrant('alice', 'alice', { scope: 'openid' });
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.token_type, 'Bearer');
  assert.equal(body.expires_in, 300);
  assert.ok(body.refresh_token);
  assert.ok(body.refresh_expires_in > 0);
  assert.ok(body.id_token);
  assert.equal(body.scope, 'openid email profile');

  const { header, payload } = decode(body.access_token);
  assert.equal(header.alg, 'RS256');
  assert.equal(header.typ, 'JWT');
  assert.ok(header.kid);
  assert.equal(payload.iss, issuer);
  assert.equal(payload.sub, 'a11ce000-0000-4000-a000-000000000001');
  assert.deepEqual(payload.aud, ['keygate', 'APP-backend', 'account']);
  assert.equal(payload.azp, 'keygate');
  assert.equal(payload.typ, 'Bearer');
  assert.equal(payload.scope, 'openid email profile');
  assert.ok(payload.sid);
  assert.ok(payload.jti);
  assert.equal(payload.exp - payload.iat, 300);
  assert.deepEqual(payload.realm_access, { roles: ['offline_access', 'default-roles-acme', 'user', 'admin'] });
  assert.deepEqual(payload.resource_access, { 'APP-backend': { roles: ['editor'] }, keygate: { roles: ['operator'] } });
  assert.deepEqual(payload.groups, ['/ops', '/ops/oncall']);
  assert.equal(payload.preferred_username, 'alice');
  assert.equal(payload.email, 'alice@example.com');
  assert.equal(payload.email_verified, true);
  assert.equal(payload.name, 'Alice Doe');

  const v = await verify(body.access_token);
  assert.equal(v.protectedHeader.kid, header.kid);

  // client_secret_basic works too
  const basic = await form(tokenUrl, { grant_type: 'password', username: 'bob', password: 'bob' }, {
    authorization: `Basic ${Buffer.from('keygate:keygate-secret').toString('base64')}`,
  });
  assert.equal(basic.status, 200);
  assert.deepEqual(decode(basic.body.access_token).payload.resource_access, { 'APP-backend': { roles: ['viewer'] } });
});

test('password grant: wrong password', async () => {
  const { status, body } = await passwordGrant('alice', 'nope');
  assert.equal(status, 401);
  assert.deepEqual(body, { error: 'invalid_grant', error_description: 'Invalid user credentials' });
});

test('client_credentials for svc-reporting', async () => {
  const { status, body } = await form(tokenUrl, {
    grant_type: 'client_credentials', client_id: 'svc-reporting', client_secret: 'svc-reporting-secret',
  });
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.refresh_token, undefined);
  const { header, payload } = decode(body.access_token);
  assert.equal(header.typ, 'JWT');
  assert.deepEqual(payload.aud, ['APP-backend', 'keygate']);
  assert.equal(payload.azp, 'svc-reporting');
  assert.equal(payload.client_id, 'svc-reporting');
  assert.equal(payload.preferred_username, 'service-account-svc-reporting');
  assert.equal(payload.sub, '5e7c0000-0000-4000-a000-0000000000f1');
  assert.deepEqual(payload.realm_access, { roles: ['svc'] });
  assert.deepEqual(payload.resource_access, { 'APP-backend': { roles: ['reader'] } });
  await verify(body.access_token);
});

test('refresh reflects a role change made via PUT /admin/users', async () => {
  const first = await passwordGrant('bob', 'bob');
  assert.equal(first.status, 200);
  assert.deepEqual(decode(first.body.access_token).payload.realm_access.roles,
    ['offline_access', 'default-roles-acme', 'user']);

  const put = await json('PUT', '/admin/users/bob', {
    realm_roles: ['default-roles-acme', 'user', 'auditor'],
    client_roles: { 'APP-backend': ['viewer', 'exporter'] },
    groups: ['/dev', '/audit'],
  });
  assert.equal(put.status, 200);

  const refreshed = await form(tokenUrl, {
    grant_type: 'refresh_token', refresh_token: first.body.refresh_token, client_id: 'keygate', client_secret: 'keygate-secret',
  });
  assert.equal(refreshed.status, 200, JSON.stringify(refreshed.body));
  const { payload } = decode(refreshed.body.access_token);
  assert.deepEqual(payload.realm_access.roles, ['default-roles-acme', 'user', 'auditor']);
  assert.deepEqual(payload.resource_access, { 'APP-backend': { roles: ['viewer', 'exporter'] } });
  assert.deepEqual(payload.groups, ['/dev', '/audit']);
  assert.equal(payload.sid, decode(first.body.access_token).payload.sid);

  const bad = await form(tokenUrl, {
    grant_type: 'refresh_token', refresh_token: 'garbage', client_id: 'keygate', client_secret: 'keygate-secret',
  });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error, 'invalid_grant');
});

test('userinfo and introspection accept the JWT access tokens', async () => {
  const { body } = await passwordGrant('alice', 'alice', { scope: 'openid' });
  const ui = await fetch(`${issuer}/protocol/openid-connect/userinfo`, {
    headers: { authorization: `Bearer ${body.access_token}` },
  });
  assert.equal(ui.status, 200);
  assert.equal((await ui.json()).preferred_username, 'alice');
  const intro = await form(`${issuer}/protocol/openid-connect/token/introspect`, {
    token: body.access_token, client_id: 'APP-backend', client_secret: 'backend-secret',
  });
  assert.equal(intro.status, 200);
  assert.equal(intro.body.active, true);
  assert.equal(intro.body.username, 'alice');
});

test('rotate: new kid signs, old tokens still verify, drop_old removes', async () => {
  const before = await passwordGrant('alice', 'alice');
  const oldKid = decode(before.body.access_token).header.kid;

  const rot = await json('POST', '/admin/rotate', {});
  assert.equal(rot.status, 200);
  assert.notEqual(rot.body.kid, oldKid);
  assert.equal(rot.body.kids[0], rot.body.kid);
  assert.ok(rot.body.kids.includes(oldKid));

  const jwks = await (await fetch(`${issuer}/protocol/openid-connect/certs`)).json();
  const kids = jwks.keys.map((k) => k.kid);
  assert.ok(kids.includes(oldKid) && kids.includes(rot.body.kid), JSON.stringify(kids));
  assert.ok(jwks.keys.every((k) => !k.d), 'JWKS must not leak private parts');

  const afterRot = await passwordGrant('alice', 'alice');
  assert.equal(afterRot.status, 200);
  assert.equal(decode(afterRot.body.access_token).header.kid, rot.body.kid);
  await verify(afterRot.body.access_token);
  await verify(before.body.access_token);

  // refresh tokens issued before the rotation keep working
  const refreshed = await form(tokenUrl, {
    grant_type: 'refresh_token', refresh_token: before.body.refresh_token, client_id: 'keygate', client_secret: 'keygate-secret',
  });
  assert.equal(refreshed.status, 200);
  assert.equal(decode(refreshed.body.access_token).header.kid, rot.body.kid);

  const drop = await json('POST', '/admin/rotate', { drop_old: true });
  assert.deepEqual(drop.body.kids, [drop.body.kid]);
  await assert.rejects(verify(before.body.access_token));
});

test('/admin/sign', async () => {
  const { status, body } = await json('POST', '/admin/sign', { claims: { exp: 1 } });
  assert.equal(status, 200);
  const { header, payload } = decode(body.token);
  assert.equal(payload.exp, 1);
  assert.equal(payload.iss, issuer);
  assert.equal(payload.preferred_username, 'alice');
  assert.ok(header.kid);
  await assert.rejects(verify(body.token), /exp/);

  const noExp = await json('POST', '/admin/sign', { claims: { exp: null, aud: 'other' } });
  const p2 = decode(noExp.body.token).payload;
  assert.equal(p2.exp, undefined);
  assert.equal(p2.aud, 'other');

  const ok = await json('POST', '/admin/sign', {});
  await verify(ok.body.token);

  const unknown = await json('POST', '/admin/sign', { header: { kid: 'no-such-kid' } });
  assert.equal(decode(unknown.body.token).header.kid, 'no-such-kid');
});

test('stats count token requests by grant', async () => {
  await json('POST', '/admin/stats/reset');
  assert.deepEqual((await json('GET', '/admin/stats')).body, { token_requests: 0, by_grant: {} });
  await passwordGrant('alice', 'alice');
  await passwordGrant('alice', 'wrong');
  await form(tokenUrl, { grant_type: 'client_credentials', client_id: 'svc-reporting', client_secret: 'svc-reporting-secret' });
  const s = (await json('GET', '/admin/stats')).body;
  assert.equal(s.token_requests, 3);
  assert.deepEqual(s.by_grant, { password: 2, client_credentials: 1 });
});

test('device flow: the sign-in page shows the user code the device printed', async () => {
  const { status, body: start } = await form(`${issuer}/protocol/openid-connect/auth/device`, {
    client_id: 'keygate', client_secret: 'keygate-secret', scope: 'openid offline_access',
  });
  assert.equal(status, 200);
  let cookies = [];
  const keep = (res) => {
    const set = res.headers.getSetCookie().map((c) => c.split(';')[0]);
    const names = new Set(set.map((c) => c.split('=')[0]));
    cookies = [...cookies.filter((c) => !names.has(c.split('=')[0])), ...set];
    return res;
  };
  const get = async (url) => keep(await fetch(url, { redirect: 'manual', headers: { cookie: cookies.join('; ') } }));
  // verification_uri_complete posts the code itself (a self-submitting form).
  const page = await (await get(start.verification_uri_complete)).text();
  const xsrf = page.match(/name="xsrf" value="([^"]+)"/)[1];
  const post = async (params) => keep(await fetch(`${issuer}/device`, {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded', cookie: cookies.join('; ') },
    body: new URLSearchParams({ xsrf, user_code: start.user_code, ...params }),
  }));
  // The confirmation page shows the code, then sign-in shows it again.
  const confirm = await post({});
  assert.equal(confirm.status, 200);
  assert.ok((await confirm.text()).includes(`<code>${start.user_code}</code>`));
  const posted = await post({ confirm: 'yes' });
  assert.ok([302, 303].includes(posted.status), `POST /device: ${posted.status}`);
  let res = posted;
  for (let i = 0; i < 5 && [302, 303].includes(res.status); i += 1) {
    res = await get(new URL(res.headers.get('location'), issuer).href);
  }
  const login = await res.text();
  assert.match(login, /id="kc-form-login"/);
  assert.ok(login.includes(`<code>${start.user_code}</code>`), login);
});
