// Seeds 001 and 004 in Chromium at a real Keycloak: keygate as the SPA's
// relying party (login on Keycloak's own login page, the SPA's API calls with
// the session cookie, the access token refreshed after its short lifespan),
// personal keys approved on Keycloak's device page, logout ending the
// Keycloak session, and Keycloak's back-channel logout ending keygate's.
//
//   node dev/browser/keycloak.mjs --keygate URL --keycloak URL --user U \
//     --password P --audience APP-backend --lifespan 10 --shots DIR
//
// Run by crates/keygate/tests/keycloak.rs, which owns the Keycloak side: the
// script stops at `@<step>` lines and goes on when it reads `next` on stdin
// (the test checks or changes Keycloak in between). Prints `@key <name>
// <key>` for each key it creates (test keys, for the test to use), then
// `E2E OK` and exits 0, or prints why and exits 1.

import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { apiCall, check, createKeyOnPage, jwtClaims, main, signIn } from './lib.mjs';

const { values: args } = parseArgs({
  options: {
    keygate: { type: 'string' },
    keycloak: { type: 'string' },
    user: { type: 'string' },
    password: { type: 'string' },
    audience: { type: 'string' },
    lifespan: { type: 'string', default: '10' },
    shots: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});
for (const name of ['keygate', 'keycloak', 'user', 'password', 'audience', 'shots']) {
  if (!args[name]) {
    console.error(`usage: node keycloak.mjs --keygate URL --keycloak URL --user U --password P --audience A --shots DIR (missing --${name})`);
    process.exit(2);
  }
}
const BASE = args.keygate.replace(/\/+$/, '');
const KEYCLOAK = args.keycloak.replace(/\/+$/, '');
const SHOTS = resolve(args.shots);
const LIFESPAN_MS = Number(args.lifespan) * 1000;

const input = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Tells the test where we are and waits for its `next`. */
async function pause(step) {
  console.log(`@${step}`);
  const { value, done } = await input.next();
  check(!done && value.trim() === 'next', `the test stopped the script at ${step}`);
}

/** The access token the upstream received for an API call that must pass. */
async function upstreamToken(page, what) {
  const api = await apiCall(page, '/api/items');
  check(api.status === 200, `${what}: GET /api/items: HTTP ${api.status} ${api.text.slice(0, 300)}`);
  const auth = JSON.parse(api.text).headers?.authorization?.[0] ?? '';
  check(auth.startsWith('Bearer '), `${what}: upstream saw authorization ${JSON.stringify(auth)}`);
  return auth.slice('Bearer '.length);
}

/** Opens the SPA, which must send the browser to Keycloak's login page, and logs in. */
async function login(page, shot) {
  await page.goto(`${BASE}/app/spa`);
  check(page.url().startsWith(`${KEYCLOAK}/`), `the SPA did not go to Keycloak: at ${page.url()}`);
  check(await page.locator('#kc-form-login').count(), `no Keycloak login form at ${page.url()}`);
  if (shot) await page.screenshot({ path: join(SHOTS, shot), fullPage: true });
  await signIn(page, args.user, args.password);
  await page.waitForURL(`${BASE}/app/spa`);
}

async function run(context) {
  const page = await context.newPage();

  // Seed 001: Keycloak's login, then the SPA's API call with the cookie only;
  // the upstream gets an access token for the backend.
  await login(page, 'keycloak-login.png');
  const first = await upstreamToken(page, 'after login');
  const claims = jwtClaims(first);
  const aud = [claims.aud ?? []].flat();
  check(aud.includes(args.audience), `the upstream's token has aud ${JSON.stringify(claims.aud)}, not ${args.audience}`);
  check(claims.iss.startsWith(KEYCLOAK), `the upstream's token was issued by ${claims.iss}`);

  // After the access token's lifespan keygate refreshes it, unseen by the SPA.
  await page.waitForTimeout(LIFESPAN_MS + 1500);
  const second = await upstreamToken(page, 'after the lifespan');
  check(second !== first, 'the access token was not refreshed after its lifespan');
  check(jwtClaims(second).exp > claims.exp, 'the refreshed token does not expire later');
  console.log('@refreshed');

  // Seed 004: two personal keys, each approved on Keycloak's device page.
  const keys = await page.goto(`${BASE}/oauth/keys`);
  check(keys.status() === 200, `GET /oauth/keys: HTTP ${keys.status()}`);
  for (const name of ['notebook', 'laptop']) {
    await page.goto(`${BASE}/oauth/keys`);
    const key = await createKeyOnPage(context, page, name, args.user, args.password);
    console.log(`@key ${name} ${key}`);
  }

  // Logout ends keygate's session and Keycloak's (the test checks Keycloak).
  // keygate sends the browser to Keycloak's end-session endpoint, which sends
  // it back to keygate's `/`; that needs a login, and since Keycloak's
  // session has ended, Keycloak shows its login form instead of answering
  // at once.
  await page.goto(`${BASE}/oauth/logout`);
  await page.waitForLoadState('load');
  check(
    page.url().startsWith(`${KEYCLOAK}/`) && (await page.locator('#kc-form-login').count()),
    `after logout the browser is not on Keycloak's login form: at ${page.url()}`,
  );
  await page.goto(`${BASE}/oauth/health`);
  const out = await apiCall(page, '/api/items');
  check(out.status === 401, `GET /api/items after logout: HTTP ${out.status} ${out.text.slice(0, 300)}`);
  await pause('logged-out');

  // Keycloak's session ended too: the SPA needs Keycloak's login page again.
  await login(page, null);
  await upstreamToken(page, 'after the second login');
  await pause('logged-in-again');

  // The test logged the user out in Keycloak's admin API: Keycloak's
  // back-channel logout ended keygate's session.
  const ended = await apiCall(page, '/api/items');
  check(ended.status === 401, `GET /api/items after Keycloak's logout: HTTP ${ended.status} ${ended.text.slice(0, 300)}`);
}

await main(SHOTS, args.chromium, run);
