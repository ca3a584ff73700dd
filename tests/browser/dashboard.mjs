// Drives the dashboard of a running `vsm all` in headless Chromium (tests/it/dashboard.rs starts
// it). Environment: VSM_URL, KEY_A (the tenant whose page is checked), SECRET_B (a value only
// tenant B's data holds), ADMIN_TOKEN, SHOTS (screenshot directory), CHROMIUM (binary),
// NOTIFICATION_ID / _ERROR / _CHAT (tenant A's failed Telegram notification: its id, the error
// the fake Bot API gave, the chat; sent when retried).
// Prints one JSON line of measurements; any failed expectation exits non-zero with a message.
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const { VSM_URL, KEY_A, SECRET_B, ADMIN_TOKEN, SHOTS } = process.env;
const { NOTIFICATION_ID, NOTIFICATION_ERROR, NOTIFICATION_CHAT } = process.env;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
const problems = [];
// Script errors fail the run; refused requests (the signed-out 401, a wrong key) are expected.
page.on("console", (m) => {
  if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(m.text());
});
page.on("pageerror", (e) => problems.push(String(e)));
const shot = (name) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
const step = (what) => console.error(`browser: ${what}`);

try {
  // First render of the sign-in page, and what it cost to transfer.
  step("load");
  await page.goto(`${VSM_URL}/dashboard`);
  await page.waitForSelector("#signin:not([hidden])");
  const measured = await page.evaluate(() => {
    const nav = performance.getEntriesByType("navigation")[0];
    const res = performance.getEntriesByType("resource");
    const fcp = performance.getEntriesByName("first-contentful-paint")[0];
    return {
      first_contentful_paint_ms: fcp ? Math.round(fcp.startTime) : null,
      dom_content_loaded_ms: Math.round(nav.domContentLoadedEventEnd),
      bytes: nav.encodedBodySize + res.reduce((n, r) => n + r.encodedBodySize, 0),
      files: 1 + res.length,
    };
  });
  await shot("01-sign-in");

  step("wrong key refused");
  await page.fill("#credential", "vsm_" + "0".repeat(64));
  await page.click("#signin-form button");
  // A selector wait, not waitForFunction: polling a function needs eval, which the page's
  // Content-Security-Policy (rightly) forbids.
  await page.waitForSelector("#signin-error:has-text('Wrong')");
  if (await page.isVisible("#app")) throw new Error("the app showed after a wrong key");

  step("sign in as tenant A");
  await page.fill("#credential", KEY_A);
  await page.keyboard.press("Enter");
  await page.waitForSelector("#app:not([hidden])");
  await page.waitForSelector("#system-2 pre:has-text('tenant-a-state')");
  const html = await page.content();
  if (html.includes(SECRET_B)) throw new Error("tenant B's data is on tenant A's page");
  await page.waitForSelector("#live:has-text('live')");
  await shot("02-systems");

  step("a state PUT with curl shows on the page");
  const started = Date.now();
  execFileSync("curl", ["-fsS", "-o", "/dev/null", "-X", "PUT", `${VSM_URL}/v1/systems/3/state`,
    "-H", `authorization: Bearer ${KEY_A}`, "-H", "content-type: application/json",
    "--data", JSON.stringify({ state: { mode: "curl-live-check" } })]);
  // The contract says within 1 s; the wait is longer so a loaded CI machine does not fail it
  // on timing: the figure is measured, printed and reported, not asserted.
  await page.waitForSelector("#system-3 pre:has-text('curl-live-check')", { timeout: 10000 });
  measured.state_change_to_screen_ms = Date.now() - started;

  step("failing job, retry");
  await page.click("a[data-view=jobs]");
  const failed = page.locator("#jobs tbody tr", { hasText: "test_probe failed on attempt 1" });
  await failed.waitFor();
  if (!(await failed.textContent()).includes("discarded")) throw new Error("the failed job is not discarded");
  await shot("03-jobs-failed");
  await failed.getByRole("button", { name: /^Retry job/ }).click();
  await page.waitForSelector("#jobs tbody tr:has(td.state-completed):has-text('test_probe')");
  await shot("04-jobs-retried");

  step("other views");
  await page.click("a[data-view=queues]");
  await page.waitForSelector("#queues tbody tr[data-queue=default]");
  await shot("05-queues");

  step("failed notification, retry");
  await page.click("a[data-view=notifications]");
  const note = page.locator(`#notifications tbody tr[data-notification="${NOTIFICATION_ID}"]`);
  await note.locator("td.state-failed").waitFor();
  const shown = await note.textContent();
  for (const expected of [NOTIFICATION_ERROR, "403", String(NOTIFICATION_CHAT)]) {
    if (!shown.includes(expected)) throw new Error(`the failed notification does not show ${expected}: ${shown}`);
  }
  await shot("06-notifications-failed");
  await note.getByRole("button", { name: `Retry notification ${NOTIFICATION_ID}` }).click();
  // Sent again (the notification.sent event refreshes the view), and no Retry once sent.
  await note.locator("td.state-sent").waitFor();
  if (await note.getByRole("button").count()) throw new Error("a sent notification offers Retry");
  await shot("06-notifications-retried");
  await page.click("a[data-view=events]");
  await page.waitForSelector("#events li:has-text('system.state')");
  await shot("07-events");
  await page.click("a[data-view=health]");
  await page.waitForSelector("#health article:has-text('Readiness')");
  await shot("08-health");

  step("keyboard: tab to the navigation and switch views");
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.tagName);
  if (!focused) throw new Error("nothing takes focus from the keyboard");

  step("phone width");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click("a[data-view=systems]");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) throw new Error(`the page is ${overflow}px wider than a phone`);
  await shot("09-systems-phone");
  await page.setViewportSize({ width: 1280, height: 800 });

  step("sign out, reload");
  await page.click("#sign-out");
  await page.waitForSelector("#signin:not([hidden])");
  await page.reload();
  await page.waitForSelector("#signin:not([hidden])");
  if (await page.isVisible("#app")) throw new Error("signed out but the app shows after reload");

  step("operator: pause and resume");
  await page.fill("#credential", ADMIN_TOKEN);
  await page.keyboard.press("Enter");
  await page.waitForSelector("#queues tbody tr[data-queue=default]");
  const row = page.locator("#queues tbody tr[data-queue=default]");
  await row.getByRole("button", { name: "Pause" }).click();
  await row.locator("td.state-paused").waitFor();
  await shot("10-operator-paused");
  await row.getByRole("button", { name: "Resume" }).click();
  await page.waitForSelector("#queues tbody tr[data-queue=default] td:has-text('running')");
  await shot("11-operator-queues");
  await page.click("#sign-out");
  await page.waitForSelector("#signin:not([hidden])");

  if (problems.length) throw new Error(`the page logged errors: ${problems.join(" | ")}`);
  console.log(JSON.stringify(measured));
} catch (err) {
  await shot("failure").catch(() => {});
  console.error(`browser test failed: ${err.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
