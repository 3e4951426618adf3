// Real-browser end-to-end test of keygate: Playwright driving Debian's
// Chromium (/usr/bin/chromium) through login at dev/idp, an API call of the
// "SPA" with the session cookie, the self-service key page (a personal key
// approved at the provider's device confirmation) and logout.
//
//   node dev/browser/e2e.mjs --keygate http://127.0.0.1:8080 --shots docs/img
//
// Prints `E2E OK key=<first 8 chars>` and exits 0, or prints why and exits 1.
// Run by crates/keygate/tests/browser.rs, which starts the stack.

import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { apiCall, check, createKeyOnPage, main, signIn } from './lib.mjs';

const { values: args } = parseArgs({
  options: {
    keygate: { type: 'string' },
    shots: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});
if (!args.keygate || !args.shots) {
  console.error('usage: node e2e.mjs --keygate URL --shots DIR');
  process.exit(2);
}
const BASE = args.keygate.replace(/\/+$/, '');
const SHOTS = resolve(args.shots);
const USER = 'alice';

async function run(context) {
  const page = await context.newPage();

  // 1. A page load of the SPA goes to the provider's login; back on /app/spa after it.
  await page.goto(`${BASE}/app/spa`);
  check(await page.locator('#kc-form-login').count(), `no login form at ${page.url()}`);
  await signIn(page, USER);
  await page.waitForURL(`${BASE}/app/spa`);
  const spa = await page.locator('body').innerText();
  check(spa.includes('"x-auth-method"') && spa.includes('session'), `/app/spa after login: ${spa.slice(0, 400)}`);

  // 2. The SPA's API call carries the cookie only; the upstream gets a bearer token.
  const api = await apiCall(page, '/api/items');
  check(api.status === 200, `GET /api/items: HTTP ${api.status} ${api.text.slice(0, 300)}`);
  const auth = JSON.parse(api.text).headers?.authorization?.[0] ?? '';
  check(auth.startsWith('Bearer '), `upstream saw authorization ${JSON.stringify(auth)}`);

  // 3. The key page.
  const keys = await page.goto(`${BASE}/oauth/keys`);
  check(keys.status() === 200, `GET /oauth/keys: HTTP ${keys.status()}`);
  await page.getByRole('heading', { name: 'Create a personal key' }).waitFor();
  await page.screenshot({ path: join(SHOTS, 'keys-page.png'), fullPage: true });

  // 4. Create a key; approve it at the provider in another tab; come back.
  const key = await createKeyOnPage(context, page, 'notebook', USER);
  await page.screenshot({ path: join(SHOTS, 'key-created.png'), fullPage: true });

  // 5. Logout; the next API call from keygate's origin is refused.
  await page.goto(`${BASE}/oauth/logout`);
  await page.goto(`${BASE}/oauth/health`);
  const after = await apiCall(page, '/api/items');
  check(after.status === 401, `GET /api/items after logout: HTTP ${after.status} ${after.text.slice(0, 300)}`);

  return key;
}

await main(SHOTS, args.chromium, async (context) => ` key=${(await run(context)).slice(0, 8)}`);
