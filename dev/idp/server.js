// keygate dev/test OpenID provider: an `oidc-provider` instance dressed up as a
// Keycloak realm ("acme"). See README.md. Not for production use.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

// ---------------------------------------------------------------------------
// command line
// ---------------------------------------------------------------------------
const DEFAULT_REDIRECT_URIS = ['http://127.0.0.1:3000/oauth/callback'];

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      host: { type: 'string', default: '127.0.0.1' },
      'access-token-ttl': { type: 'string', default: '300' },
      'refresh-token-ttl': { type: 'string', default: '1800' },
      'offline-token-ttl': { type: 'string' },
      'state-file': { type: 'string' },
      'redirect-uri': { type: 'string', multiple: true, default: [] },
      'post-logout-redirect-uri': { type: 'string', multiple: true, default: [] },
      'backchannel-logout-uri': { type: 'string' },
      'rotate-refresh-tokens': { type: 'boolean', default: false },
      verbose: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  }));
} catch (err) {
  process.stderr.write(`dev idp: ${err.message}\n`);
  process.exit(2);
}

if (args.help) {
  process.stdout.write(`usage: node server.js [--port 0] [--host 127.0.0.1]
  [--access-token-ttl 300] [--refresh-token-ttl 1800] [--offline-token-ttl S]
  [--state-file PATH]
  [--redirect-uri URI]... [--post-logout-redirect-uri URI]...
  [--backchannel-logout-uri URI] [--rotate-refresh-tokens] [--verbose]
`);
  process.exit(0);
}

function intArg(name) {
  const n = Number(args[name]);
  if (!Number.isInteger(n) || n < 0) {
    process.stderr.write(`dev idp: --${name} must be a non-negative integer\n`);
    process.exit(2);
  }
  return n;
}

const PORT = intArg('port');
const HOST = args.host;
const ACCESS_TTL = intArg('access-token-ttl') || 1;
const REFRESH_TTL = intArg('refresh-token-ttl') || 1;
// Offline tokens (scope offline_access) may live longer than a browser
// session's refresh token, as Keycloak's "Offline Session Max" and "SSO
// Session Max" are separate settings.
const OFFLINE_TTL = args['offline-token-ttl'] === undefined ? REFRESH_TTL : (intArg('offline-token-ttl') || 1);
const STATE_FILE = args['state-file'];
const VERBOSE = args.verbose;
const REDIRECT_URIS = [...new Set([...DEFAULT_REDIRECT_URIS, ...args['redirect-uri']])];
const POST_LOGOUT_REDIRECT_URIS = [...new Set([
  ...REDIRECT_URIS.map((u) => `${new URL(u).origin}/`),
  ...args['post-logout-redirect-uri'],
])];

const log = (...m) => { if (VERBOSE) process.stderr.write(`${m.join(' ')}\n`); };

// ---------------------------------------------------------------------------
// realm data: users, service accounts (persistent across provider swaps)
// ---------------------------------------------------------------------------
const REALM = 'acme';
const MOUNT = `/realms/${REALM}`;
const RESOURCE = 'urn:acme:APP-backend'; // internal resource indicator; aud is set by hand
const USER_AUDIENCE = ['keygate', 'APP-backend', 'account'];
const SCOPES = ['openid', 'offline_access', 'email', 'profile', 'roles', 'web-origins', 'acr', 'basic'];
const DEFAULT_SCOPES = ['email', 'profile']; // Keycloak "default client scopes"

const users = new Map(); // username -> user
function addUser(u) { users.set(u.username, u); }
addUser({
  id: 'a11ce000-0000-4000-a000-000000000001',
  username: 'alice',
  password: 'alice',
  email: 'alice@example.com',
  given_name: 'Alice',
  family_name: 'Doe',
  realm_roles: ['offline_access', 'default-roles-acme', 'user', 'admin'],
  client_roles: { 'APP-backend': ['editor'], keygate: ['operator'] },
  groups: ['/ops', '/ops/oncall'],
});
addUser({
  id: 'b0b00000-0000-4000-a000-000000000002',
  username: 'bob',
  password: 'bob',
  email: 'bob@example.com',
  given_name: 'Bob',
  family_name: 'Smith',
  realm_roles: ['offline_access', 'default-roles-acme', 'user'],
  client_roles: { 'APP-backend': ['viewer'] },
  groups: ['/dev'],
});
addUser({
  id: 'ca701000-0000-4000-a000-000000000003',
  username: 'carol',
  password: 'carol',
  email: 'carol@example.com',
  given_name: 'Carol',
  family_name: 'Jones',
  realm_roles: ['default-roles-acme'],
  client_roles: {},
  groups: [],
});
// service-account users (one per client with client_credentials)
addUser({
  id: '5e7c0000-0000-4000-a000-0000000000f1',
  username: 'service-account-svc-reporting',
  serviceAccountClientId: 'svc-reporting',
  audience: ['APP-backend', 'keygate'],
  realm_roles: ['svc'],
  client_roles: { 'APP-backend': ['reader'] },
  groups: [],
});
addUser({
  id: '5e7c0000-0000-4000-a000-0000000000f2',
  username: 'service-account-keygate',
  serviceAccountClientId: 'keygate',
  audience: ['APP-backend', 'account'],
  realm_roles: ['default-roles-acme'],
  client_roles: {},
  groups: [],
});

const userById = (id) => [...users.values()].find((u) => u.id === id);
const serviceAccountFor = (clientId) => [...users.values()]
  .find((u) => u.serviceAccountClientId === clientId);
const fullName = (u) => [u.given_name, u.family_name].filter(Boolean).join(' ') || undefined;

function userProfileClaims(u) {
  if (u.serviceAccountClientId) {
    return { email_verified: false, preferred_username: u.username };
  }
  return {
    email_verified: true,
    name: fullName(u),
    preferred_username: u.username,
    given_name: u.given_name,
    family_name: u.family_name,
    email: u.email,
  };
}

// Keycloak-shaped access token claims (roles read from the store right now).
function accessTokenClaims({ user, clientId, scope, sid, jti, iat, exp, issuer }) {
  const claims = {
    exp,
    iat,
    jti,
    iss: issuer,
    aud: user?.audience ?? USER_AUDIENCE,
    sub: user?.id ?? clientId,
    typ: 'Bearer',
    azp: clientId,
    sid,
    acr: '1',
    'allowed-origins': [...new Set(REDIRECT_URIS.map((u) => new URL(u).origin))],
    realm_access: { roles: [...(user?.realm_roles ?? [])] },
    resource_access: Object.fromEntries(Object.entries(user?.client_roles ?? {})
      .map(([c, roles]) => [c, { roles: [...roles] }])),
    scope,
    ...(user ? userProfileClaims(user) : {}),
    groups: [...(user?.groups ?? [])],
  };
  if (user?.serviceAccountClientId) {
    claims.client_id = clientId;
    delete claims.sid;
  }
  for (const k of Object.keys(claims)) if (claims[k] === undefined) delete claims[k];
  return claims;
}

// ---------------------------------------------------------------------------
// persistent storage for oidc-provider (survives provider swaps)
// ---------------------------------------------------------------------------
const storage = new Map(); // `${model}:${id}` -> { payload, expiresAt }
const grantIndex = new Map(); // grantId -> Set(storage keys)
const userCodeIndex = new Map(); // userCode -> id
const uidIndex = new Map(); // session uid -> id

// With --state-file, every change to the signing keys and to this storage is
// appended to the file as one JSON line, written before the change is
// answered, and replayed at start: a provider killed (SIGKILL) and started
// again with the same file and port keeps its keys, sessions, grants and
// refresh tokens, as Keycloak keeps them in its database. Not persisted:
// changes made through /admin/users, and access tokens revoked by jti.
function journal(entry) {
  if (STATE_FILE) fs.appendFileSync(STATE_FILE, `${JSON.stringify(entry)}\n`);
}

function store(model, id, payload, expiresAt) {
  const key = `${model}:${id}`;
  storage.set(key, { payload, expiresAt });
  if (payload.grantId) {
    if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
    grantIndex.get(payload.grantId).add(key);
  }
  if (payload.userCode) userCodeIndex.set(payload.userCode, id);
  if (payload.uid) uidIndex.set(payload.uid, id);
}

function revokeGrant(grantId) {
  for (const key of grantIndex.get(grantId) ?? []) storage.delete(key);
  grantIndex.delete(grantId);
}

class MemoryAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    store(this.model, id, payload, expiresAt);
    journal({ op: 'set', model: this.model, id, payload, expiresAt: Number.isFinite(expiresAt) ? expiresAt : null });
  }

  async find(id) {
    const key = this.key(id);
    const entry = storage.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      storage.delete(key);
      return undefined;
    }
    return structuredClone(entry.payload);
  }

  async findByUserCode(userCode) {
    const id = userCodeIndex.get(userCode);
    return id ? this.find(id) : undefined;
  }

  async findByUid(uid) {
    const id = uidIndex.get(uid);
    return id ? this.find(id) : undefined;
  }

  async consume(id) {
    const entry = storage.get(this.key(id));
    if (entry) {
      entry.payload.consumed = Math.floor(Date.now() / 1000);
      journal({ op: 'consume', key: this.key(id), at: entry.payload.consumed });
    }
  }

  async destroy(id) {
    storage.delete(this.key(id));
    journal({ op: 'del', key: this.key(id) });
  }

  async revokeByGrantId(grantId) {
    revokeGrant(grantId);
    journal({ op: 'revoke-grant', grantId });
  }
}

// periodic sweep of expired entries
setInterval(() => {
  const now = Date.now();
  for (const [k, v] of storage) if (v.expiresAt <= now) storage.delete(k);
}, 60_000).unref();

// ---------------------------------------------------------------------------
// signing keys
// ---------------------------------------------------------------------------
const keys = []; // [{ kid, jwk (private), key (KeyObject) }], keys[0] signs

function newKey() {
  // Generate as PEM text and re-import: exporting a JWK straight from the
  // KeyObject that generateKeyPairSync returned can deadlock Node 20 when a
  // garbage collection runs during the export (the finished key-generation
  // job's destructor waits on the key's mutex, held by the export).
  const { privateKey: pem } = crypto.generateKeyPairSync('rsa', {
    modulusLength: 2048,
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  const privateKey = crypto.createPrivateKey(pem);
  const kid = crypto.randomBytes(12).toString('base64url');
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
  return { kid, jwk, key: privateKey };
}

const keyFromJwk = (jwk) => ({ kid: jwk.kid, jwk, key: crypto.createPrivateKey({ key: jwk, format: 'jwk' }) });
const journalKeys = () => journal({ op: 'keys', keys: keys.map((k) => k.jwk) });

// Replays --state-file (when it exists), then rewrites it with only what is
// still live, so the file does not grow across restarts.
function loadState() {
  if (!STATE_FILE || !fs.existsSync(STATE_FILE)) return;
  const lines = fs.readFileSync(STATE_FILE, 'utf8').split('\n');
  lines.forEach((line, i) => {
    if (!line.trim()) return;
    let e;
    try {
      e = JSON.parse(line);
    } catch (err) {
      // A line cut short by a kill mid-write can only be the last one.
      if (i >= lines.length - 2) return;
      throw new Error(`${STATE_FILE}:${i + 1}: ${err.message}`);
    }
    if (e.op === 'keys') keys.splice(0, keys.length, ...e.keys.map(keyFromJwk));
    else if (e.op === 'set') store(e.model, e.id, e.payload, e.expiresAt ?? Infinity);
    else if (e.op === 'consume') { const x = storage.get(e.key); if (x) x.payload.consumed = e.at; }
    else if (e.op === 'del') storage.delete(e.key);
    else if (e.op === 'revoke-grant') revokeGrant(e.grantId);
  });
  const now = Date.now();
  const live = [{ op: 'keys', keys: keys.map((k) => k.jwk) }];
  for (const [key, { payload, expiresAt }] of storage) {
    if (expiresAt <= now) { storage.delete(key); continue; }
    const sep = key.indexOf(':');
    live.push({
      op: 'set', model: key.slice(0, sep), id: key.slice(sep + 1), payload, expiresAt: Number.isFinite(expiresAt) ? expiresAt : null,
    });
  }
  const tmp = `${STATE_FILE}.tmp`;
  fs.writeFileSync(tmp, live.map((e) => `${JSON.stringify(e)}\n`).join(''));
  fs.renameSync(tmp, STATE_FILE);
}

// ---------------------------------------------------------------------------
// stats
// ---------------------------------------------------------------------------
const stats = { token_requests: 0, by_grant: {} };
function countToken(grantType) {
  stats.token_requests += 1;
  stats.by_grant[grantType] = (stats.by_grant[grantType] ?? 0) + 1;
}

// ---------------------------------------------------------------------------
// provider construction (re-done on key rotation)
// ---------------------------------------------------------------------------
let ISSUER; // set once listening
const ROUTES = {
  authorization: '/protocol/openid-connect/auth',
  token: '/protocol/openid-connect/token',
  jwks: '/protocol/openid-connect/certs',
  userinfo: '/protocol/openid-connect/userinfo',
  end_session: '/protocol/openid-connect/logout',
  revocation: '/protocol/openid-connect/revoke',
  introspection: '/protocol/openid-connect/token/introspect',
  device_authorization: '/protocol/openid-connect/auth/device',
  code_verification: '/device',
  pushed_authorization_request: '/protocol/openid-connect/ext/par/request',
};

function clients() {
  const keygate = {
    client_id: 'keygate',
    client_secret: 'keygate-secret',
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials',
      'urn:ietf:params:oauth:grant-type:device_code', 'password'],
    response_types: ['code'],
    redirect_uris: REDIRECT_URIS,
    post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
    token_endpoint_auth_method: 'client_secret_basic',
  };
  if (args['backchannel-logout-uri']) {
    keygate.backchannel_logout_uri = args['backchannel-logout-uri'];
    keygate.backchannel_logout_session_required = true;
  }
  return [
    keygate,
    {
      client_id: 'APP-frontend',
      client_secret: 'frontend-secret',
      grant_types: ['authorization_code', 'refresh_token', 'password', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      redirect_uris: REDIRECT_URIS,
      post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      // bearer-only resource server; the secret only allows introspection
      client_id: 'APP-backend',
      client_secret: 'backend-secret',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'svc-reporting',
      client_secret: 'svc-reporting-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'spa',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: REDIRECT_URIS,
      post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
      token_endpoint_auth_method: 'none',
    },
  ];
}

async function findAccount(ctx, sub) {
  const user = userById(sub) ?? users.get(sub);
  if (!user) return undefined;
  return {
    accountId: user.id,
    async claims() {
      return { sub: user.id, ...userProfileClaims(user), groups: [...user.groups] };
    },
  };
}

const resourceServerInfo = () => ({
  scope: SCOPES.join(' '),
  audience: 'APP-backend',
  accessTokenFormat: 'jwt',
  accessTokenTTL: ACCESS_TTL,
  jwt: { sign: { alg: 'RS256' } },
});

function buildProvider() {
  const configuration = {
    adapter: MemoryAdapter,
    clients: clients(),
    jwks: { keys: keys.map((k) => k.jwk) },
    findAccount,
    routes: ROUTES,
    scopes: SCOPES,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username'],
    },
    cookies: { keys: ['keygate-dev-idp-cookie-key'] },
    clientBasedCORS: () => true,
    pkce: { required: (ctx, client) => client.clientAuthMethod === 'none' },
    interactions: { url: (ctx, interaction) => `${MOUNT}/interaction/${interaction.uid}` },
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: args['rotate-refresh-tokens'],
    conformIdTokenClaims: false,
    ttl: {
      AccessToken: ACCESS_TTL,
      ClientCredentials: ACCESS_TTL,
      IdToken: ACCESS_TTL,
      RefreshToken: (ctx, token) => ((token?.scope ?? '').split(' ').includes('offline_access') ? OFFLINE_TTL : REFRESH_TTL),
      AuthorizationCode: 60,
      DeviceCode: 600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
    },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      clientCredentials: { enabled: true },
      userinfo: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      backchannelLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => {
          if (oneOf) return oneOf.includes(RESOURCE) ? RESOURCE : oneOf[0];
          return RESOURCE;
        },
        useGrantedResource: async () => true,
        getResourceServerInfo: async () => resourceServerInfo(),
      },
    },
    formats: {
      customizers: {
        async jwt(ctx, token, jwt) {
          const clientId = token.clientId;
          const user = token.accountId ? userById(token.accountId) : serviceAccountFor(clientId);
          jwt.header = { typ: 'JWT' };
          let { scope } = jwt.payload;
          if (!token.accountId) scope = scope || DEFAULT_SCOPES.join(' ');
          jwt.payload = accessTokenClaims({
            user,
            clientId,
            scope,
            sid: token.sid ?? lookupSid(token.sessionUid, clientId),
            jti: jwt.payload.jti,
            iat: jwt.payload.iat,
            exp: jwt.payload.exp,
            issuer: jwt.payload.iss,
          });
        },
      },
    },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = `<!DOCTYPE html><html><head><title>Error</title></head><body><h1>We are sorry...</h1><pre>${escapeHtml(JSON.stringify(out, null, 2))}</pre></body></html>`;
    },
  };

  const provider = new Provider(ISSUER, configuration);
  provider.proxy = false;
  // Keycloak puts the session id (sid) into every token of a browser session
  provider.Client.prototype.includeSid = () => true;

  provider.registerGrantType('password', passwordGrant, ['username', 'password', 'scope', 'resource'], ['resource']);

  // token endpoint bookkeeping and Keycloak-like response decoration
  provider.use(async (ctx, next) => {
    const isToken = ctx.method === 'POST' && ctx.path === ROUTES.token;
    await next();
    if (!isToken) return;
    const grantType = ctx.oidc?.params?.grant_type ?? 'unknown';
    countToken(grantType);
    const body = ctx.body;
    if (ctx.status === 200 && body && typeof body === 'object' && body.access_token) {
      if (body.refresh_token && body.refresh_expires_in === undefined) {
        const rt = ctx.oidc.entities?.RefreshToken;
        body.refresh_expires_in = rt?.remainingTTL ?? REFRESH_TTL;
      }
      if (!body.refresh_token) body.refresh_expires_in ??= 0;
      body['not-before-policy'] ??= 0;
      const sid = ctx.oidc.entities?.AccessToken?.sid ?? ctx.oidc.entities?.RefreshToken?.sid;
      if (sid && !body.session_state) body.session_state = sid;
    } else if (ctx.status === 400 && body?.error === 'invalid_request'
      && body.error_description === 'requested grant type is not allowed for this client') {
      body.error = 'unauthorized_client'; // what Keycloak answers
    } else if (ctx.status === 400 && body?.error === 'invalid_grant' && grantType === 'refresh_token') {
      // Keycloak says this for expired / revoked / unknown refresh tokens
      body.error_description = 'Token is not active';
    }
  });

  if (VERBOSE) {
    provider.use(async (ctx, next) => {
      await next();
      log(`${ctx.method} ${MOUNT}${ctx.path} -> ${ctx.status}`);
    });
  }
  provider.on('server_error', (ctx, err) => process.stderr.write(`dev idp: server_error: ${err?.stack ?? err}\n`));

  return { provider, callback: provider.callback() };
}

// ---------------------------------------------------------------------------
// password grant ("direct access grants")
// ---------------------------------------------------------------------------
async function passwordGrant(ctx) {
  const { provider, client, params } = ctx.oidc;
  if (!params.username) throw new errors.InvalidRequest('Missing parameter: username');

  const user = users.get(params.username);
  if (!user || user.serviceAccountClientId || user.password !== params.password) {
    ctx.status = 401;
    ctx.body = { error: 'invalid_grant', error_description: 'Invalid user credentials' };
    return;
  }

  const requested = (params.scope ?? '').split(' ').filter(Boolean);
  const unknown = requested.filter((s) => !SCOPES.includes(s));
  if (unknown.length) throw new errors.InvalidScope('Invalid scopes: ' + requested.join(' '), unknown.join(' '));
  if (requested.includes('offline_access') && !user.realm_roles.includes('offline_access')) {
    ctx.status = 400;
    ctx.body = { error: 'not_allowed', error_description: 'Offline tokens not allowed for the user or client' };
    return;
  }
  const scopeSet = new Set([...requested, ...DEFAULT_SCOPES]);
  const scope = SCOPES.filter((s) => scopeSet.has(s)).join(' ');

  const account = await findAccount(ctx, user.id);
  ctx.oidc.entity('Account', account);

  const grant = new provider.Grant({ accountId: user.id, clientId: client.clientId });
  grant.addOIDCScope(scope);
  grant.addResourceScope(RESOURCE, scope);
  const grantId = await grant.save();
  ctx.oidc.entity('Grant', grant);

  const sid = crypto.randomUUID();
  const authTime = Math.floor(Date.now() / 1000);

  const at = new provider.AccessToken({
    accountId: user.id, client, grantId, gty: 'password', sid, scope,
  });
  at.resourceServer = new provider.ResourceServer(RESOURCE, resourceServerInfo());
  ctx.oidc.entity('AccessToken', at);
  const accessToken = await at.save();

  let refreshToken;
  let refreshExpiresIn;
  if (client.grantTypeAllowed('refresh_token')) {
    const rt = new provider.RefreshToken({
      accountId: user.id,
      client,
      grantId,
      gty: 'password',
      sid,
      scope,
      resource: RESOURCE,
      authTime,
      expiresWithSession: false,
    });
    ctx.oidc.entity('RefreshToken', rt);
    refreshToken = await rt.save();
    refreshExpiresIn = rt.expiration;
  }

  let idToken;
  if (scopeSet.has('openid')) {
    const claims = await account.claims('id_token', scope, {}, []);
    const token = new provider.IdToken({ ...claims, auth_time: authTime, acr: '1' }, { ctx });
    token.scope = scope;
    token.set('sid', sid);
    idToken = await token.issue({ use: 'idtoken' });
  }

  ctx.body = {
    access_token: accessToken,
    expires_in: at.expiration,
    refresh_expires_in: refreshExpiresIn ?? 0,
    ...(refreshToken ? { refresh_token: refreshToken } : {}),
    token_type: 'Bearer',
    ...(idToken ? { id_token: idToken } : {}),
    'not-before-policy': 0,
    session_state: sid,
    scope,
  };
}

// ---------------------------------------------------------------------------
// login / consent pages (Keycloak-ish form; consent is automatic)
// ---------------------------------------------------------------------------
function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[c]));
}

function loginPage(uid, { error, username = '', userCode } = {}) {
  // A device flow's sign-in shows the code, as Keycloak's device page does,
  // so the user can check it against the one the device printed.
  const device = userCode
    ? `<p id="device-code">Signing in approves the device that shows the code <code>${escapeHtml(userCode)}</code>. Go on only if it is the code your device printed.</p>\n`
    : '';
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in to acme</title></head>
<body>
<h1 id="kc-page-title">Sign in to your account</h1>
${device}${error ? `<div id="input-error" class="alert-error">${escapeHtml(error)}</div>` : ''}
<form id="kc-form-login" action="${MOUNT}/interaction/${encodeURIComponent(uid)}/login" method="post">
  <label for="username">Username or email</label>
  <input id="username" name="username" type="text" value="${escapeHtml(username)}" autofocus autocomplete="username">
  <label for="password">Password</label>
  <input id="password" name="password" type="password" autocomplete="current-password">
  <input id="kc-login" name="login" type="submit" value="Sign In">
</form>
</body></html>`;
}

async function readBody(req, limit = 1 << 20) {
  const chunks = [];
  let size = 0;
  for await (const c of req) {
    size += c.length;
    if (size > limit) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(c);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function autoConsent(provider, req, res, details) {
  const { prompt: { details: missing }, grantId, session, params } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scope] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scope.join(' '));
    }
  }
  const result = { consent: { grantId: await grant.save() } };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

async function handleInteraction(req, res, url) {
  const { provider } = current;
  const m = url.pathname.slice(MOUNT.length).match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!m) return sendJson(res, 404, { error: 'not_found' });
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return sendHtml(res, 400, `<!DOCTYPE html><html><body><h1>We are sorry...</h1><p>${escapeHtml(err.message)}</p></body></html>`);
  }
  // Stored without the mask's dash; shown as the device printed it (****-****).
  const stored = details.deviceCode
    ? (await provider.DeviceCode.find(details.deviceCode, { ignoreExpiration: true }))?.userCode
    : undefined;
  const userCode = stored?.replace(/^([A-Z]{4})([A-Z]{4})$/, '$1-$2');
  if (!m[2] && req.method === 'GET') {
    if (details.prompt.name === 'login') return sendHtml(res, 200, loginPage(details.uid, { userCode }));
    if (details.prompt.name === 'consent') return autoConsent(provider, req, res, details);
    return sendJson(res, 501, { error: 'unsupported prompt' });
  }
  if (m[2] && req.method === 'POST') {
    const form = new URLSearchParams(await readBody(req));
    const username = form.get('username') ?? '';
    const user = users.get(username) ?? [...users.values()].find((u) => u.email === username);
    if (!user || user.serviceAccountClientId || user.password !== form.get('password')) {
      return sendHtml(res, 200, loginPage(details.uid, { error: 'Invalid username or password.', username, userCode }));
    }
    return provider.interactionFinished(req, res, {
      login: { accountId: user.id, acr: '1', remember: true },
    }, { mergeWithLastSubmission: false });
  }
  return sendJson(res, 405, { error: 'method_not_allowed' });
}

// ---------------------------------------------------------------------------
// admin routes (test only)
// ---------------------------------------------------------------------------
function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), 'cache-control': 'no-store' });
  res.end(data);
}

function sendHtml(res, status, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(body);
}

async function readJson(req) {
  const text = await readBody(req);
  if (!text.trim()) return {};
  try {
    const v = JSON.parse(text);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('expected a JSON object');
    return v;
  } catch (err) {
    throw Object.assign(new Error(`invalid JSON body: ${err.message}`), { status: 400 });
  }
}

function rotate(dropOld) {
  const k = newKey();
  const old = dropOld ? [] : keys.slice();
  keys.splice(0, keys.length, k, ...old);
  journalKeys();
  current = buildProvider(); // requests in flight keep using the previous instance
  return { kid: k.kid, kids: keys.map((x) => x.kid) };
}

async function adminSign(body) {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: 'RS256', typ: 'JWT', kid: keys[0].kid, ...(body.header ?? {}) };
  const signer = keys.find((k) => k.kid === header.kid) ?? keys[0];
  for (const k of Object.keys(header)) if (header[k] === null) delete header[k];
  let claims = {};
  if (body.defaults !== false) {
    claims = accessTokenClaims({
      user: users.get('alice'),
      clientId: 'keygate',
      scope: 'openid email profile',
      sid: crypto.randomUUID(),
      jti: crypto.randomUUID(),
      iat: now,
      exp: now + ACCESS_TTL,
      issuer: ISSUER,
    });
  }
  for (const [k, v] of Object.entries(body.claims ?? {})) {
    if (v === null) delete claims[k];
    else claims[k] = v;
  }
  const token = await new jose.CompactSign(Buffer.from(JSON.stringify(claims)))
    .setProtectedHeader(header)
    .sign(signer.key);
  return { token };
}

async function handleAdmin(req, res, url) {
  const p = url.pathname.replace(/\/+$/, '');
  const method = req.method;
  if (p === '/admin/health' && method === 'GET') return sendJson(res, 200, { ok: true });
  if (p === '/admin/stats' && method === 'GET') return sendJson(res, 200, stats);
  if (p === '/admin/stats/reset' && method === 'POST') {
    stats.token_requests = 0;
    stats.by_grant = {};
    return sendJson(res, 200, stats);
  }
  if (p === '/admin/rotate' && method === 'POST') {
    const body = await readJson(req);
    return sendJson(res, 200, rotate(body.drop_old === true));
  }
  if (p === '/admin/keys' && method === 'GET') {
    return sendJson(res, 200, { current: keys[0].kid, kids: keys.map((k) => k.kid) });
  }
  if (p === '/admin/sign' && method === 'POST') {
    const body = await readJson(req);
    try {
      return sendJson(res, 200, await adminSign(body));
    } catch (err) {
      return sendJson(res, 400, { error: 'sign_failed', error_description: err.message });
    }
  }
  const um = p.match(/^\/admin\/users\/([^/]+)$/);
  if (um) {
    const user = users.get(decodeURIComponent(um[1]));
    if (!user) return sendJson(res, 404, { error: 'user_not_found' });
    if (method === 'GET') {
      const { password, ...rest } = user;
      return sendJson(res, 200, rest);
    }
    if (method === 'PUT') {
      const body = await readJson(req);
      if (body.realm_roles !== undefined) {
        if (!Array.isArray(body.realm_roles)) return sendJson(res, 400, { error: 'realm_roles must be an array' });
        user.realm_roles = body.realm_roles.map(String);
      }
      if (body.client_roles !== undefined) {
        if (typeof body.client_roles !== 'object' || body.client_roles === null || Array.isArray(body.client_roles)) {
          return sendJson(res, 400, { error: 'client_roles must be an object' });
        }
        user.client_roles = Object.fromEntries(Object.entries(body.client_roles)
          .map(([c, r]) => [c, (Array.isArray(r) ? r : []).map(String)]));
      }
      if (body.groups !== undefined) {
        if (!Array.isArray(body.groups)) return sendJson(res, 400, { error: 'groups must be an array' });
        user.groups = body.groups.map(String);
      }
      const { password, ...rest } = user;
      return sendJson(res, 200, rest);
    }
  }
  return sendJson(res, 404, { error: 'not_found' });
}

// ---------------------------------------------------------------------------
// JWT access tokens at userinfo / introspection / revocation
// (oidc-provider only handles opaque tokens there; Keycloak handles its JWTs)
// ---------------------------------------------------------------------------
const revokedJtis = new Map(); // jti -> exp (seconds)
const looksLikeJwt = (t) => typeof t === 'string' && t.split('.').length === 3;

async function verifyAccessJwt(token) {
  try {
    const { kid } = jose.decodeProtectedHeader(token);
    const k = keys.find((x) => x.kid === kid);
    if (!k) return undefined;
    const { payload } = await jose.jwtVerify(token, crypto.createPublicKey(k.key), {
      issuer: ISSUER, algorithms: ['RS256'],
    });
    if (payload.typ !== 'Bearer' || typeof payload.exp !== 'number') return undefined;
    if (payload.jti && revokedJtis.has(payload.jti)) return undefined;
    return payload;
  } catch {
    return undefined;
  }
}

function clientFromRequest(req, form) {
  let id; let secret;
  const auth = req.headers.authorization ?? '';
  if (/^basic /i.test(auth)) {
    const dec = Buffer.from(auth.slice(6).trim(), 'base64').toString('utf8');
    const i = dec.indexOf(':');
    if (i >= 0) {
      id = decodeURIComponent(dec.slice(0, i).replace(/\+/g, ' '));
      secret = decodeURIComponent(dec.slice(i + 1).replace(/\+/g, ' '));
    }
  } else {
    id = form.get('client_id') ?? undefined;
    secret = form.get('client_secret') ?? undefined;
  }
  const c = clients().find((x) => x.client_id === id);
  if (!c) return undefined;
  if (c.token_endpoint_auth_method === 'none') return c;
  return c.client_secret === secret ? c : undefined;
}

// returns true when handled, false to let oidc-provider handle the request
async function handleJwtAware(req, res, rest) {
  if (rest === ROUTES.userinfo) {
    const auth = req.headers.authorization ?? '';
    const m = auth.match(/^bearer\s+(\S+)$/i);
    if (!m || !looksLikeJwt(m[1])) return false;
    const payload = await verifyAccessJwt(m[1]);
    const user = payload && userById(payload.sub);
    if (!user) {
      res.setHeader('www-authenticate', 'Bearer realm="acme", error="invalid_token", error_description="Token verification failed"');
      sendJson(res, 401, { error: 'invalid_token', error_description: 'Token verification failed' });
      return true;
    }
    sendJson(res, 200, { sub: user.id, ...userProfileClaims(user), groups: [...user.groups] });
    return true;
  }
  if ((rest === ROUTES.introspection || rest === ROUTES.revocation) && req.method === 'POST') {
    const raw = await readBody(req);
    req.body = raw; // oidc-provider falls back to req.body when the stream is consumed
    const form = new URLSearchParams(raw);
    const token = form.get('token');
    if (!looksLikeJwt(token)) return false;
    const client = clientFromRequest(req, form);
    if (!client || client.token_endpoint_auth_method === 'none') {
      sendJson(res, 401, { error: 'invalid_client', error_description: 'Authentication failed' });
      return true;
    }
    const payload = await verifyAccessJwt(token);
    if (rest === ROUTES.revocation) {
      if (payload?.jti) revokedJtis.set(payload.jti, payload.exp);
      res.writeHead(200, { 'cache-control': 'no-store' });
      res.end();
      return true;
    }
    if (!payload || payload.exp <= Math.floor(Date.now() / 1000)) {
      sendJson(res, 200, { active: false });
      return true;
    }
    sendJson(res, 200, {
      ...payload,
      client_id: payload.azp,
      username: payload.preferred_username,
      token_type: 'Bearer',
      active: true,
    });
    return true;
  }
  return false;
}

function lookupSid(sessionUid, clientId) {
  const id = sessionUid && uidIndex.get(sessionUid);
  const entry = id && storage.get(`Session:${id}`);
  return entry?.payload?.authorizations?.[clientId]?.sid;
}

// Keycloak's realm info document at /realms/acme
function realmInfo() {
  const spki = crypto.createPublicKey(keys[0].key).export({ format: 'der', type: 'spki' }).toString('base64');
  return {
    realm: REALM,
    public_key: spki,
    'token-service': `${ISSUER}/protocol/openid-connect`,
    'account-service': `${ISSUER}/account`,
    'tokens-not-before': 0,
  };
}

// ---------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------
let current; // { provider, callback }

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname.startsWith('/admin/')) {
      log(`${req.method} ${url.pathname}`);
      return await handleAdmin(req, res, url);
    }
    if (url.pathname === MOUNT || url.pathname === `${MOUNT}/`) {
      return sendJson(res, 200, realmInfo());
    }
    if (url.pathname.startsWith(`${MOUNT}/`)) {
      const rest = url.pathname.slice(MOUNT.length);
      if (rest.startsWith('/interaction/')) return await handleInteraction(req, res, url);
      if (await handleJwtAware(req, res, rest)) return undefined;

      if (rest === ROUTES.authorization && req.method === 'GET') {
        // Keycloak-isms: default client scopes are always granted, and
        // offline_access works without prompt=consent (consent is automatic here).
        const scopes = (url.searchParams.get('scope') ?? '').split(' ').filter(Boolean);
        if (scopes.length && url.searchParams.get('response_type')) {
          for (const s of DEFAULT_SCOPES) if (!scopes.includes(s)) scopes.push(s);
          url.searchParams.set('scope', scopes.join(' '));
          if (scopes.includes('offline_access')) {
            const prompt = (url.searchParams.get('prompt') ?? '').split(' ').filter(Boolean);
            if (!prompt.includes('consent') && !prompt.includes('none')) {
              prompt.push('consent');
              url.searchParams.set('prompt', prompt.join(' '));
            }
          }
          req.url = url.pathname + url.search;
        }
      }

      const { callback } = current;
      req.originalUrl = req.url;
      req.url = req.url.slice(MOUNT.length);
      return await callback(req, res);
    }
    return sendJson(res, 404, { error: 'not_found' });
  } catch (err) {
    if (!err.status || err.status >= 500) process.stderr.write(`dev idp: ${err.stack ?? err}\n`);
    if (!res.headersSent) sendJson(res, err.status ?? 500, { error: err.status ? 'invalid_request' : 'server_error', error_description: err.message });
    else res.destroy();
  }
});

server.on('error', (err) => {
  process.stderr.write(`dev idp: ${err.message}\n`);
  process.exit(1);
});

try {
  loadState();
} catch (err) {
  process.stderr.write(`dev idp: --state-file: ${err.message}\n`);
  process.exit(2);
}

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  const hostForUrl = HOST.includes(':') ? `[${HOST}]` : HOST;
  ISSUER = `http://${hostForUrl}:${port}${MOUNT}`;
  if (!keys.length) {
    keys.push(newKey());
    journalKeys();
  }
  current = buildProvider();
  process.stdout.write(`IDP READY issuer=${ISSUER}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
