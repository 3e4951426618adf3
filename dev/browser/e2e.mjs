// Real-browser end-to-end test of keygate: Playwright driving Debian's
// Chromium (/usr/bin/chromium) through login at dev/idp, an API call of the
// "SPA" with the session cookie, the self-service key page (a personal key
// approved at the provider's device confirmation) and logout.
//
//   node dev/browser/e2e.mjs --keygate http://127.0.0.1:8080 --shots docs/img
//
// Prints `E2E OK key=<first 8 chars>` and exits 0, or prints why and exits 1.
// Run by crates/keygate/tests/browser.rs, which starts the stack.

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

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
const STEP_TIMEOUT = 20_000;

function check(cond, what) {
  if (!cond) throw new Error(what);
}

/** Fills the provider's login form as USER and submits it. */
async function signIn(page) {
  await page.fill('#kc-form-login #username', USER);
  await page.fill('#kc-form-login #password', USER);
  await Promise.all([page.waitForLoadState('load'), page.click('#kc-form-login #kc-login')]);
}

/** A GET from the page's origin with the page's cookies, as an SPA makes it. */
function apiCall(page, path) {
  return page.evaluate(async (p) => {
    const r = await fetch(p, { headers: { accept: 'application/json' } });
    return { status: r.status, text: await r.text() };
  }, path);
}

/**
 * Walks the provider's device-flow pages in `page` (opened at the
 * verification URI): the user-code form, the login form, the confirmation
 * form; until the provider says the device is signed in.
 */
async function approveDevice(page) {
  for (let step = 0; step < 8; step++) {
    await page.waitForLoadState('load');
    if (await page.locator('#kc-form-login').count()) {
      await signIn(page);
      continue;
    }
    const input = page.locator('form[id="op.deviceInputForm"]');
    if (await input.count()) {
      await Promise.all([
        page.waitForNavigation({ waitUntil: 'load' }),
        page.locator('button[type="submit"][form="op.deviceInputForm"]').first().click(),
      ]);
      continue;
    }
    const confirm = page.locator('form[id="op.deviceConfirmForm"]');
    if (await confirm.count()) {
      // The plain "Continue" button confirms; the one named "abort" cancels.
      await Promise.all([
        page.waitForNavigation({ waitUntil: 'load' }),
        page.locator('button[type="submit"][form="op.deviceConfirmForm"]:not([name="abort"])').first().click(),
      ]);
      continue;
    }
    const text = await page.locator('body').innerText();
    if (/success|signed in|you can close|completed/i.test(text)) return text;
    throw new Error(`unexpected provider page at ${page.url()}: ${text.slice(0, 400)}`);
  }
  throw new Error(`device approval did not finish: at ${page.url()}`);
}

async function run(context) {
  context.setDefaultTimeout(STEP_TIMEOUT);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT);
  const page = await context.newPage();

  // 1. A page load of the SPA goes to the provider's login; back on /app/spa after it.
  await page.goto(`${BASE}/app/spa`);
  check(await page.locator('#kc-form-login').count(), `no login form at ${page.url()}`);
  await signIn(page);
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
  await page.fill('form.create #description', 'notebook');
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('form.create button[type="submit"]')]);
  check(
    await page.locator('#approve').count(),
    `no approval link at ${page.url()}: ${(await page.locator('body').innerText()).slice(0, 400)}`,
  );
  const approveHref = await page.locator('#approve').getAttribute('href');
  const tab = await context.newPage();
  await tab.goto(new URL(approveHref, page.url()).href);
  await approveDevice(tab);
  await tab.close();
  await page.bringToFront();
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('#finish')]);
  const keyEl = page.locator('#key');
  check(await keyEl.count(), `no key shown: ${(await page.locator('body').innerText()).slice(0, 400)}`);
  const key = (await keyEl.innerText()).trim();
  check(key.length > 16, `key too short: ${JSON.stringify(key)}`);
  await page.screenshot({ path: join(SHOTS, 'key-created.png'), fullPage: true });

  // 5. Logout; the next API call from keygate's origin is refused.
  await page.goto(`${BASE}/oauth/logout`);
  await page.goto(`${BASE}/oauth/health`);
  const after = await apiCall(page, '/api/items');
  check(after.status === 401, `GET /api/items after logout: HTTP ${after.status} ${after.text.slice(0, 300)}`);

  return key;
}

const profile = mkdtempSync(join(tmpdir(), 'keygate-e2e-'));
let context;
let code = 0;
try {
  mkdirSync(SHOTS, { recursive: true });
  // A fresh profile each run (Playwright passes it as --user-data-dir).
  context = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium,
    headless: true,
    viewport: { width: 1100, height: 720 },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const key = await run(context);
  console.log(`E2E OK key=${key.slice(0, 8)}`);
} catch (err) {
  console.log(`E2E FAILED: ${err?.stack ?? err}`);
  code = 1;
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
