// Shared by the Chromium scripts (e2e.mjs at dev/idp, keycloak.mjs at the
// real Keycloak): the browser's launch, the provider's forms, an SPA's fetch.

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const STEP_TIMEOUT = 20_000;

export function check(cond, what) {
  if (!cond) throw new Error(what);
}

/** The claims of a JWT (not verified: keygate and the upstream did that). */
export function jwtClaims(token) {
  const part = token.split('.')[1] ?? '';
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

/** Fills the provider's login form (the same ids at Keycloak and dev/idp) and submits it. */
export async function signIn(page, user, password = user) {
  await page.fill('#kc-form-login #username', user);
  await page.fill('#kc-form-login #password', password);
  await Promise.all([page.waitForLoadState('load'), page.click('#kc-form-login #kc-login')]);
}

/** A GET from the page's origin with the page's cookies, as an SPA makes it. */
export function apiCall(page, path) {
  return page.evaluate(async (p) => {
    const r = await fetch(p, { headers: { accept: 'application/json' } });
    return { status: r.status, text: await r.text() };
  }, path);
}

/** Submits `form` with its button `button` and waits for the next page. */
async function submit(page, button) {
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.locator(button).first().click()]);
}

/**
 * Walks the provider's device-flow pages in `page` (opened at the
 * verification URI): the user-code form, the login form, the consent form;
 * until the provider says the device is signed in. Knows Keycloak's pages
 * (`kc-user-verify-device-user-code-form`, `kc-oauth` consent) and dev/idp's
 * (`op.deviceInputForm`, `op.deviceConfirmForm`).
 */
export async function approveDevice(page, user, password = user) {
  for (let step = 0; step < 8; step++) {
    await page.waitForLoadState('load');
    if (await page.locator('#kc-form-login').count()) {
      await signIn(page, user, password);
      continue;
    }
    if (await page.locator('form[id="op.deviceInputForm"]').count()) {
      await submit(page, 'button[type="submit"][form="op.deviceInputForm"]');
      continue;
    }
    if (await page.locator('form[id="op.deviceConfirmForm"]').count()) {
      // The plain "Continue" button confirms; the one named "abort" cancels.
      await submit(page, 'button[type="submit"][form="op.deviceConfirmForm"]:not([name="abort"])');
      continue;
    }
    if (await page.locator('#kc-user-verify-device-user-code-form').count()) {
      await submit(page, '#kc-user-verify-device-user-code-form [type="submit"]');
      continue;
    }
    if (await page.locator('#kc-oauth').count()) {
      // Keycloak's consent: "Yes" is name=accept, "No" is name=cancel.
      await submit(page, '#kc-oauth [name="accept"]');
      continue;
    }
    const text = await page.locator('body').innerText();
    if (/success|signed in|you can close|completed/i.test(text)) return text;
    throw new Error(`unexpected provider page at ${page.url()}: ${text.slice(0, 400)}`);
  }
  throw new Error(`device approval did not finish: at ${page.url()}`);
}

/**
 * Creates a personal key on keygate's key page (`page` is on it, logged in):
 * the create form, the approval at the provider in another tab, then
 * "show my key". Returns the key.
 */
export async function createKeyOnPage(context, page, description, user, password = user) {
  await page.fill('form.create #description', description);
  await submit(page, 'form.create button[type="submit"]');
  check(
    await page.locator('#approve').count(),
    `no approval link at ${page.url()}: ${(await page.locator('body').innerText()).slice(0, 400)}`,
  );
  const approveHref = await page.locator('#approve').getAttribute('href');
  const tab = await context.newPage();
  await tab.goto(new URL(approveHref, page.url()).href);
  await approveDevice(tab, user, password);
  await tab.close();
  await page.bringToFront();
  await submit(page, '#finish');
  const keyEl = page.locator('#key');
  check(await keyEl.count(), `no key shown: ${(await page.locator('body').innerText()).slice(0, 400)}`);
  const key = (await keyEl.innerText()).trim();
  check(key.length > 16, `key too short: ${JSON.stringify(key)}`);
  return key;
}

/** Headless Chromium with a fresh profile (Playwright passes it as --user-data-dir). */
export function launch(profile, executablePath) {
  return chromium.launchPersistentContext(profile, {
    executablePath,
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
}

/**
 * Runs `run(context)` in a fresh headless Chromium, then exits: 0 after
 * printing `E2E OK<suffix>` (`run`'s answer), 1 after printing why it failed.
 */
export async function main(shots, executablePath, run) {
  const profile = mkdtempSync(join(tmpdir(), 'keygate-browser-'));
  let context;
  let code = 0;
  try {
    mkdirSync(shots, { recursive: true });
    context = await launch(profile, executablePath);
    context.setDefaultTimeout(STEP_TIMEOUT);
    context.setDefaultNavigationTimeout(STEP_TIMEOUT);
    const suffix = await run(context);
    console.log(`E2E OK${suffix ?? ''}`);
  } catch (err) {
    console.log(`E2E FAILED: ${err?.stack ?? err}`);
    code = 1;
  } finally {
    await context?.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
  process.exit(code);
}
