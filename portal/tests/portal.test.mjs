// End-to-end tests of the portal in Debian's Chromium, driven by Playwright
// (playwright-core, executablePath /usr/bin/chromium), against a real
// `herald serve` (target/debug/herald) with a temp data dir, and a real HTTP
// receiver on loopback. Screenshots go to target/portal-artifacts/.
//
// Run by scripts/test-portal (which installs what is missing).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import http from 'node:http';
import net from 'node:net';
import { chromium } from 'playwright-core';

const ROOT = resolve(import.meta.dirname, '..', '..');
const BIN = process.env.HERALD_BIN ?? join(ROOT, 'target', 'debug', 'herald');
const ARTIFACTS = process.env.PORTAL_ARTIFACTS ?? join(ROOT, 'target', 'portal-artifacts');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ADMIN = 'portal-test-admin-token-0123456789';
const LAPTOP = { width: 1366, height: 900 };
const PHONE = { width: 390, height: 844 };
const WAIT = 15_000;

let herald, dataDir, base, browser, receiver;
const received = [];
const keys = {};
const ids = { a: new Set(), b: new Set() };

function freePort() {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function call(method, path, key, body) {
  const res = await fetch(`${base}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function emit(key, type, payload) {
  const r = await call('POST', '/integrations/events', key, { event_type: type, payload });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return r.body.id;
}

async function shot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

before(async () => {
  assert.ok(existsSync(BIN), `${BIN} is missing: run cargo build -p herald-api`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`);
  mkdirSync(ARTIFACTS, { recursive: true });
  receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      received.push({ headers: req.headers, body: JSON.parse(body) });
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok from the portal test receiver');
    });
  });
  await new Promise((ok) => receiver.listen(0, '127.0.0.1', ok));

  dataDir = mkdtempSync(join(tmpdir(), 'herald-portal-'));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  herald = spawn(BIN, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--admin-token', ADMIN, '--allow-target', '127.0.0.0/8'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  herald.stderr.on('data', (d) => (stderr += d));
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      if ((await fetch(`${base}/readyz`)).ok) break;
    } catch {}
    if (herald.exitCode !== null || Date.now() > deadline) throw new Error(`herald did not start:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  for (const t of ['acme', 'globex', 'initech']) {
    const r = await fetch(`${base}/api/v1/admin/tenants`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ id: t }),
    });
    assert.equal(r.status, 201);
    keys[t] = (await r.json()).api_key;
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  herald?.kill('SIGTERM');
  receiver?.close();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/// A fresh browser context (its own sessionStorage), with every request URL
/// and WebSocket URL recorded.
async function newPage(viewport = LAPTOP) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.urls = [];
  page.problems = [];
  page.on('request', (r) => page.urls.push(r.url()));
  page.on('websocket', (ws) => page.urls.push(ws.url()));
  page.on('pageerror', (e) => page.problems.push(String(e)));
  page.on('console', (m) => m.type() === 'error' && !/40[14]|Failed to load resource/.test(m.text()) && page.problems.push(m.text()));
  await page.goto(`${base}/portal`);
  return page;
}

/// How far the page scrolls sideways, and the widest culprits if it does.
async function overflow(page) {
  return page.evaluate(() => {
    const over = document.documentElement.scrollWidth - window.innerWidth;
    const culprits = [...document.querySelectorAll('body *')]
      .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
      .slice(0, 5)
      .map((e) => `${e.tagName.toLowerCase()}.${e.className} ${Math.round(e.getBoundingClientRect().right)}px`);
    return { over, culprits };
  });
}

async function signIn(page, key) {
  await page.getByLabel('API key').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

test('a wrong key is refused and nothing is stored', async () => {
  const page = await newPage();
  await signIn(page, 'hk_not_a_key');
  await page.getByRole('alert').filter({ hasText: 'refused' }).waitFor({ timeout: WAIT });
  assert.equal(await page.evaluate(() => sessionStorage.length + localStorage.length), 0);
  assert.equal(await page.getByRole('tab').count(), 0, 'no portal behind a wrong key');
  await shot(page, '01-wrong-key');
  await page.context().close();
});

test('sign in, subscribe, watch an event live, open its delivery, replay it, recover, chart it', async () => {
  const page = await newPage();
  const key = keys.acme;
  await signIn(page, key);
  await page.getByRole('heading', { name: 'Subscriptions' }).waitFor({ timeout: WAIT });
  // The key is in sessionStorage only.
  const storage = await page.evaluate(() => ({ session: Object.values(sessionStorage), local: localStorage.length }));
  assert.deepEqual(storage, { session: [key], local: 0 });

  // Create a subscription to the receiver; its secret is masked until revealed.
  const url = `http://127.0.0.1:${receiver.address().port}/hooks`;
  await page.getByLabel('Endpoint URL').first().fill(url);
  await page.getByLabel(/Event types/).first().fill('order.*');
  await page.getByLabel('Description', { exact: true }).first().fill('portal e2e');
  await page.getByRole('button', { name: 'Create subscription' }).click();
  const detail = page.getByTestId('sub-detail');
  await detail.waitFor({ timeout: WAIT });
  const subId = (await detail.locator('h3 code').textContent()).trim();
  assert.match(subId, /^sub_/);
  ids.a.add(subId);
  const secret = detail.getByTestId('secret-value');
  assert.doesNotMatch(await secret.textContent(), /whsec_/, 'masked until revealed');
  await detail.getByRole('button', { name: 'Reveal secret' }).click();
  assert.match(await secret.textContent(), /^whsec_/);
  await detail.getByRole('button', { name: 'Hide secret' }).click();
  await page.getByTestId('subs-table').getByText(url).waitFor();
  await shot(page, '02-subscription-created');

  // Edit, pause, resume.
  await page.getByLabel('Description', { exact: true }).nth(1).fill('portal e2e (edited)');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.getByRole('status').filter({ hasText: 'Saved.' }).waitFor({ timeout: WAIT });
  assert.equal((await call('GET', `/portal/webhooks/${subId}`, key)).body.description, 'portal e2e (edited)');
  await page.getByRole('button', { name: 'Pause' }).click();
  await page.getByTestId('sub-status').filter({ hasText: 'paused' }).waitFor({ timeout: WAIT });
  assert.equal((await call('GET', `/portal/webhooks/${subId}`, key)).body.status, 'paused');
  await page.getByRole('button', { name: 'Resume' }).click();
  await page.getByTestId('sub-status').filter({ hasText: 'active' }).waitFor({ timeout: WAIT });

  // Rotate with a one-hour grace window: the window is shown.
  await page.getByLabel(/Grace window/).fill('3600');
  await page.getByRole('button', { name: 'Rotate secret' }).click();
  await page.getByTestId('grace').filter({ hasText: /min left/ }).waitFor({ timeout: WAIT });
  const rotated = (await call('GET', `/portal/webhooks/${subId}`, key)).body;
  assert.ok(rotated.previous_secret_expires_at, 'the API has the grace window too');

  // The live tail: an event emitted through the API shows up by itself.
  await page.getByRole('tab', { name: 'Events' }).click();
  await page.getByTestId('tail-state').filter({ hasText: 'live' }).waitFor({ timeout: WAIT });
  const eventId = await emit(key, 'order.created', { order: 42 });
  ids.a.add(eventId);
  const tail = page.getByTestId('live-tail');
  assert.equal(await tail.getAttribute('aria-live'), 'polite');
  await tail.getByText(eventId).waitFor({ timeout: WAIT });
  await page.getByTestId('event-list').getByText(eventId).waitFor({ timeout: WAIT });
  await shot(page, '03-live-tail');

  // Its delivery: status, latency, response body.
  await tail.getByRole('button', { name: 'order.created' }).first().click();
  const ev = page.getByTestId('event-detail');
  await ev.getByRole('heading', { name: new RegExp(eventId) }).waitFor({ timeout: WAIT });
  const rows = ev.getByTestId('delivery-row');
  // No reload: the detail looks again by itself until the first attempt is in.
  await rows.filter({ hasText: 'delivered' }).first().waitFor({ timeout: WAIT });
  const first = rows.first();
  assert.match(await first.textContent(), /initial/);
  assert.match(await first.textContent(), /200/);
  assert.match(await first.textContent(), /\d+ ms/);
  await first.getByText('Request and response').click();
  assert.equal((await first.getByTestId('response-body').textContent()).trim(), 'ok from the portal test receiver');
  assert.match(await first.textContent(), new RegExp(`herald-subscription-id: ${subId}`));
  await shot(page, '04-delivery');

  // One-click replay: a second delivery, triggered by the replay.
  await ev.getByRole('button', { name: 'Replay event' }).click();
  await ev.getByRole('status').filter({ hasText: 'Replay scheduled: 1 delivery' }).waitFor({ timeout: WAIT });
  await rows.nth(1).waitFor({ timeout: WAIT });
  await ev.locator('[data-testid=delivery-row]', { hasText: 'replay' }).filter({ hasText: 'delivered' }).waitFor({ timeout: WAIT });
  assert.equal(await rows.count(), 2);
  const mine = received.filter((r) => r.body.id === eventId);
  assert.equal(mine.length, 2, 'the receiver got the event and its replay');
  assert.equal(mine[0].headers['herald-subscription-id'], subId);
  await shot(page, '05-replayed');

  // Paging and the type filter of the event list.
  for (let i = 0; i < 22; i++) ids.a.add(await emit(key, i % 2 ? 'invoice.paid' : 'order.updated', { i }));
  await page.getByLabel('Event type').fill('invoice.*');
  await page.getByRole('button', { name: 'Filter' }).click();
  const list = page.getByTestId('event-list');
  await list.getByText('invoice.paid').first().waitFor({ timeout: WAIT });
  assert.equal(await list.getByText('order.', { exact: false }).count(), 0, 'filtered to invoice.*');
  assert.equal(await list.locator('li').count(), 11);
  await page.getByLabel('Event type').fill('');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.getByRole('button', { name: 'Next page' }).waitFor({ timeout: WAIT });
  assert.equal(await list.locator('li').count(), 20);
  await page.getByRole('button', { name: 'Next page' }).click();
  await page.getByRole('button', { name: 'Previous page' }).waitFor({ timeout: WAIT });
  await list.getByText(eventId).waitFor({ timeout: WAIT });

  // Bulk recovery of the last hour, with its progress.
  await page.getByRole('tab', { name: 'Subscriptions' }).click();
  await page.getByRole('button', { name: `Open subscription ${subId} to ${url}` }).click();
  await page.getByRole('button', { name: 'Start recovery' }).click();
  const rec = page.getByTestId('recovery');
  await rec.filter({ hasText: 'completed' }).waitFor({ timeout: 30_000 });
  const progress = await rec.locator('progress').evaluate((p) => [p.value, p.max]);
  assert.ok(progress[1] >= 12 && progress[0] === progress[1], `recovery progress ${progress}`);
  await shot(page, '06-recovery');

  // Charts from the delivery log: outcomes and latency.
  await page.getByRole('tab', { name: 'Delivery charts' }).click();
  const summary = page.getByTestId('chart-summary');
  await summary.waitFor({ timeout: WAIT });
  const n = Number((await summary.textContent()).match(/^(\d+) attempts/)[1]);
  const logs = await call('GET', `/integrations/webhooks?limit=500`, key);
  assert.equal(n, logs.body.data.length, 'the chart counts every attempt of the log');
  assert.ok(n >= 2);
  assert.ok((await page.getByTestId('outcome-chart').locator('rect.bar.delivered').count()) >= 1);
  assert.ok((await page.getByTestId('latency-chart').locator('circle').count()) >= 1);
  await shot(page, '07-charts');

  // Delete (after confirming) a second subscription.
  await page.getByRole('tab', { name: 'Subscriptions' }).click();
  await page.getByLabel('Endpoint URL').first().fill('http://127.0.0.1:9/gone');
  await page.getByLabel(/Event types/).first().fill('nothing.*');
  await page.getByRole('button', { name: 'Create subscription' }).click();
  await page.getByTestId('subs-table').getByText('http://127.0.0.1:9/gone').waitFor({ timeout: WAIT });
  const gone = (await page.getByTestId('sub-detail').locator('h3 code').textContent()).trim();
  ids.a.add(gone);
  page.once('dialog', (d) => d.accept());
  await page.getByRole('button', { name: 'Delete' }).click();
  await page.getByTestId('subs-table').getByText('http://127.0.0.1:9/gone').waitFor({ state: 'detached', timeout: WAIT });
  assert.equal((await call('GET', `/portal/webhooks/${gone}`, key)).status, 404);
  assert.equal((await call('GET', `/portal/webhooks/${subId}`, key)).status, 200);

  // The audit trail lists the changes newest first: that deletion on top.
  await page.getByRole('tab', { name: 'Audit' }).click();
  const audit = page.getByTestId('audit-list');
  await audit.getByText(gone).first().waitFor({ timeout: WAIT });
  const top = audit.locator('tbody tr').first();
  assert.equal((await top.locator('td').nth(1).textContent()).trim(), 'subscription.deleted');
  assert.equal((await top.locator('td code').first().textContent()).trim(), gone);

  // Keyboard: the tabs move with the arrow keys.
  await page.getByRole('tab', { name: 'Delivery charts' }).focus();
  await page.keyboard.press('ArrowLeft');
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Events', 'focus stays on the tabs');
  await page.getByTestId('tail-state').waitFor({ timeout: WAIT });

  // Nothing sensitive leaked: no key in any URL, WebSocket included; no page error.
  assert.ok(page.urls.some((u) => u.startsWith('ws://') && u.includes('/api/v1/webhooks/stream')), 'the tail used the WebSocket');
  for (const u of page.urls) assert.ok(!u.includes(key), `key in a URL: ${u}`);
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('phone width: the same views fit a narrow screen', async () => {
  const page = await newPage(PHONE);
  await signIn(page, keys.acme);
  await page.getByRole('heading', { name: 'Subscriptions' }).waitFor({ timeout: WAIT });
  await page.getByRole('button', { name: /^Open subscription/ }).first().click();
  await page.getByTestId('sub-detail').waitFor();
  await shot(page, '08-phone-subscriptions');
  const o1 = await overflow(page);
  assert.ok(o1.over <= 0, `no horizontal scrolling on a phone: ${JSON.stringify(o1)}`);
  await page.getByRole('tab', { name: 'Events' }).click();
  await page.getByTestId('event-list').getByRole('button', { name: 'order.updated' }).first().click();
  await page.getByTestId('delivery-row').first().waitFor({ timeout: WAIT });
  await shot(page, '09-phone-event');
  const o2 = await overflow(page);
  assert.ok(o2.over <= 0, `no horizontal scrolling on a phone: ${JSON.stringify(o2)}`);
  await page.getByRole('tab', { name: 'Delivery charts' }).click();
  await page.getByTestId('outcome-chart').waitFor({ timeout: WAIT });
  await shot(page, '10-phone-charts');
  const o3 = await overflow(page);
  assert.ok(o3.over <= 0, `no horizontal scrolling on a phone: ${JSON.stringify(o3)}`);
  await page.context().close();
});

test("tenant B never sees tenant A's data", async () => {
  assert.ok(ids.a.size > 2, 'the flow test created data for tenant A');
  const page = await newPage();
  await signIn(page, keys.globex);
  await page.getByRole('heading', { name: 'Subscriptions' }).waitFor({ timeout: WAIT });
  await page.getByText('No subscriptions yet.').waitFor({ timeout: WAIT });
  const seen = [];
  seen.push(await page.content());

  await page.getByRole('tab', { name: 'Events' }).click();
  await page.getByTestId('tail-state').filter({ hasText: 'live' }).waitFor({ timeout: WAIT });
  // An event of A's and then one of B's: only B's reaches B's tail.
  ids.a.add(await emit(keys.acme, 'order.created', { secret_of: 'acme' }));
  const mine = await emit(keys.globex, 'order.created', { of: 'globex' });
  await page.getByTestId('live-tail').getByText(mine).waitFor({ timeout: WAIT });
  await page.getByRole('button', { name: 'Refresh' }).click();
  await page.getByTestId('event-list').getByText(mine).waitFor({ timeout: WAIT });
  seen.push(await page.content());

  await page.getByRole('tab', { name: 'Delivery charts' }).click();
  await page.getByTestId('chart-summary').waitFor({ timeout: WAIT });
  assert.match(await page.getByTestId('chart-summary').textContent(), /^0 attempts/);
  // Asking for A's subscription by id shows nothing of it either.
  const aSub = [...ids.a].find((id) => id.startsWith('sub_'));
  await page.getByLabel('Subscription id').fill(aSub);
  await page.getByRole('button', { name: 'Show' }).click();
  await page.getByTestId('chart-summary').filter({ hasText: /^0 attempts/ }).waitFor({ timeout: WAIT });
  seen.push((await page.content()).replace(`value="${aSub}"`, ''));
  await shot(page, '11-tenant-b');

  const all = seen.join('\n');
  for (const id of ids.a) assert.ok(!all.includes(id), `tenant A's ${id} shown to tenant B`);
  assert.ok(!all.includes('acme'), "tenant A's name shown to tenant B");
  await page.context().close();
});

test('routing: a filter tested against a sample event, then a thin, filtered subscription gets only what matches', async () => {
  const page = await newPage();
  const key = keys.initech;
  await signIn(page, key);
  await page.getByRole('heading', { name: 'Subscriptions' }).waitFor({ timeout: WAIT });
  const form = page.locator('form').filter({ has: page.getByRole('heading', { name: 'New subscription' }) });
  const result = form.getByTestId('filter-result-new');
  const test = form.getByRole('button', { name: 'Test against the sample event' });

  // The sample (warehouse EU-2, quantity 120) against three filters.
  await form.getByLabel(/^Filter/).fill('data.warehouse == "EU-2" && data.quantity > 100');
  await test.click();
  await result.filter({ hasText: 'Matches' }).waitFor({ timeout: WAIT });
  await form.getByLabel(/^Filter/).fill('data.warehouse == "EU-1"');
  await test.click();
  await result.filter({ hasText: 'Does not match' }).waitFor({ timeout: WAIT });
  await form.getByLabel(/^Filter/).fill('data.warehouse == ');
  await test.click();
  await result.and(page.locator('.error')).waitFor({ timeout: WAIT });
  const refusal = await result.textContent();
  assert.doesNotMatch(refusal, /^(Matches|Does not match)/, 'an invalid filter is an error, not a verdict');
  assert.match(refusal, /not a valid CEL expression/, 'the error says what is wrong');
  await shot(page, '12-filter-editor');

  // Create it: EU-2 only, thin payloads.
  const url = `http://127.0.0.1:${receiver.address().port}/routing`;
  await form.getByLabel(/^Filter/).fill('data.warehouse == "EU-2"');
  await form.getByLabel('Endpoint URL').fill(url);
  await form.getByLabel(/Event types/).fill('inventory.*');
  await form.getByLabel('Payload').selectOption('thin');
  await form.getByRole('button', { name: 'Create subscription' }).click();
  await page.getByTestId('sub-detail').waitFor({ timeout: WAIT });
  const subId = (await page.getByTestId('sub-detail').locator('h3 code').textContent()).trim();
  const sub = (await call('GET', `/portal/webhooks/${subId}`, key)).body;
  assert.equal(sub.filter, 'data.warehouse == "EU-2"');
  assert.equal(sub.payload, 'thin');
  assert.equal(await page.getByTestId('sub-detail').getByLabel(/^Filter/).inputValue(), 'data.warehouse == "EU-2"');

  // EU-1 first, then EU-2 (same tenant, same partition, fanned out in order):
  // once EU-2 is in, EU-1 was skipped for good.
  const skipped = await emit(key, 'inventory.moved', { warehouse: 'EU-1', quantity: 5 });
  const wanted = await emit(key, 'inventory.moved', { warehouse: 'EU-2', quantity: 7 });
  const deadline = Date.now() + WAIT;
  while (!received.some((r) => r.headers['webhook-id'] && r.body.id === wanted) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const got = received.filter((r) => r.body.id === wanted || r.body.id === skipped);
  assert.deepEqual(got.map((r) => r.body.id), [wanted], 'only the matching event is delivered');
  assert.equal(got[0].body.data, undefined, 'a thin payload carries no data');
  const full = await call('GET', `/integrations/events/${wanted}`, key);
  assert.equal(full.status, 200);
  assert.equal(JSON.stringify(full.body).includes('EU-2'), true, 'the receiver fetches the full event');
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

/// A self-signed test authority (P-256, made with `openssl req -x509`), the
/// same as the engine's Kafka settings unit test.
const TEST_CA = `-----BEGIN CERTIFICATE-----
MIIBiDCCAS+gAwIBAgIUSekbnv2xy/RFBLgAAT/sII1+QpUwCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwOaGVyYWxkLXRlc3QtY2EwIBcNMjYxMjA1MDI0ODU2WhgPMjEy
NjExMTEwMjQ4NTZaMBkxFzAVBgNVBAMMDmhlcmFsZC10ZXN0LWNhMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAE++uMxCiO02K78CMjLgjDYSMbjmKvOeG3NTvd5f8w
OiSDXukouOZJPdumPlAzyDsHPFYvZS54+J/xUXWNp42XdKNTMFEwHQYDVR0OBBYE
FKJnlN+s1k6jEsC3dL2pBHNxlnmQMB8GA1UdIwQYMBaAFKJnlN+s1k6jEsC3dL2p
BHNxlnmQMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgPiXLB/ni
gQ7rteH/U05p5PdKVKCkr+e4+leVXMQZW/ICIFmEsG44z/vCo/esJGZdO3Dd43BP
wSqa7L05T2TnPIQ3
-----END CERTIFICATE-----
`;

test('a Kafka destination: its TLS and SASL settings are set in the form, and the password is never shown', async () => {
  const page = await newPage();
  const key = keys.initech;
  const PASSWORD = 'portal-kafka-pass-Qx7v';
  await signIn(page, key);
  await page.getByRole('heading', { name: 'Subscriptions' }).waitFor({ timeout: WAIT });
  const form = page.locator('form').filter({ has: page.getByRole('heading', { name: 'New subscription' }) });
  assert.equal(await form.getByTestId('kafka-new').count(), 0, 'no Kafka fields for an HTTP endpoint');
  await form.getByLabel('Endpoint URL').fill('kafka://127.0.0.1:9095/portal-orders');
  await form.getByTestId('kafka-new').waitFor({ timeout: WAIT });
  await form.getByLabel('Security protocol').selectOption('sasl_ssl');
  await form.getByLabel('SASL mechanism').selectOption('SCRAM-SHA-512');
  await form.getByLabel('SASL username').fill('herald');
  await form.getByLabel('SASL password').fill(PASSWORD);
  await form.getByLabel(/^CA certificates/).fill(TEST_CA);
  await form.getByLabel(/Event types/).fill('orders.*');
  await shot(page, '13-kafka-destination');
  await form.getByRole('button', { name: 'Create subscription' }).click();
  const detail = page.getByTestId('sub-detail');
  await detail.waitFor({ timeout: WAIT });
  const subId = (await detail.locator('h3 code').textContent()).trim();
  const stored = async () => (await call('GET', `/portal/webhooks/${subId}`, key)).body;
  let sub = await stored();
  assert.equal(sub.url, 'kafka://127.0.0.1:9095/portal-orders');
  assert.deepEqual(
    { ...sub.kafka, ca_pem: sub.kafka.ca_pem.trim() },
    { security_protocol: 'sasl_ssl', sasl_mechanism: 'SCRAM-SHA-512', username: 'herald', password_set: true, ca_pem: TEST_CA.trim() },
  );
  // The detail shows the stored settings, never the password.
  assert.equal(await detail.getByLabel('Security protocol').inputValue(), 'sasl_ssl');
  assert.equal(await detail.getByLabel('SASL password').inputValue(), '');
  assert.match(await detail.getByLabel('SASL password').getAttribute('placeholder'), /stored/);
  assert.equal((await page.content()).includes(PASSWORD), false, 'the password is not in the page');

  // An edit that leaves the Kafka settings alone keeps them, password included.
  await detail.getByLabel('Description').fill('orders to the data team');
  await detail.getByRole('button', { name: 'Save changes' }).click();
  await detail.getByText('Saved.').waitFor({ timeout: WAIT });
  sub = await stored();
  assert.equal(sub.description, 'orders to the data team');
  assert.equal(sub.kafka.password_set, true);
  assert.equal(sub.kafka.security_protocol, 'sasl_ssl');

  // A bad CA is refused by the server, with its reason, and changes nothing.
  await detail.getByLabel(/^CA certificates/).fill('not a certificate');
  await detail.getByLabel('SASL password').fill(PASSWORD);
  await detail.getByRole('button', { name: 'Save changes' }).click();
  await detail.getByRole('alert').filter({ hasText: 'ca_pem' }).waitFor({ timeout: WAIT });
  assert.equal((await stored()).kafka.ca_pem.trim(), TEST_CA.trim());
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('endpoint authentication: basic auth set in the form reaches the receiver, and the password is never shown', async () => {
  const page = await newPage();
  const key = keys.globex;
  const PASSWORD = 'portal-basic-pass-9Lw2';
  await signIn(page, key);
  await page.getByRole('heading', { name: 'Subscriptions' }).waitFor({ timeout: WAIT });
  const form = page.locator('form').filter({ has: page.getByRole('heading', { name: 'New subscription' }) });
  const url = `http://127.0.0.1:${receiver.address().port}/basic`;
  await form.getByLabel('Endpoint URL').fill(url);
  await form.getByTestId('endpoint-new').waitFor({ timeout: WAIT });
  assert.equal(await form.getByLabel(/^Client certificate/).count(), 0, 'no TLS fields for an http:// endpoint');
  await form.getByLabel('Authorization').selectOption('basic');
  await form.getByLabel('Username').fill('herald-portal');
  await form.getByLabel('Password').fill(PASSWORD);
  await form.getByLabel(/Event types/).fill('gate.*');
  await shot(page, '14-endpoint-auth');
  await form.getByRole('button', { name: 'Create subscription' }).click();
  const detail = page.getByTestId('sub-detail');
  await detail.waitFor({ timeout: WAIT });
  const subId = (await detail.locator('h3 code').textContent()).trim();
  const stored = async () => (await call('GET', `/portal/webhooks/${subId}`, key)).body;
  assert.deepEqual((await stored()).auth, { type: 'basic', username: 'herald-portal', secret_set: true });
  assert.equal(await detail.getByLabel('Authorization').inputValue(), 'basic');
  assert.equal(await detail.getByLabel('Password').inputValue(), '');
  assert.match(await detail.getByLabel('Password').getAttribute('placeholder'), /stored/);
  assert.equal((await page.content()).includes(PASSWORD), false, 'the password is not in the page');

  const before = received.length;
  const id = await emit(key, 'gate.cleared', { gate: 'QA-7' });
  const deadline = Date.now() + WAIT;
  let got;
  while (!(got = received.slice(before).find((r) => r.body.id === id)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(got, 'the delivery arrived');
  const expected = 'Basic ' + Buffer.from(`herald-portal:${PASSWORD}`).toString('base64');
  assert.equal(got.headers.authorization, expected);

  // An edit that leaves the credentials alone keeps them.
  await detail.getByLabel('Description').fill('quality gates');
  await detail.getByRole('button', { name: 'Save changes' }).click();
  await detail.getByText('Saved.').waitFor({ timeout: WAIT });
  assert.deepEqual((await stored()).auth, { type: 'basic', username: 'herald-portal', secret_set: true });
  assert.deepEqual(page.problems, []);
  await page.context().close();
});
