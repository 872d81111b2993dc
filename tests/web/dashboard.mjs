// The dashboard in a real browser: Debian's chromium, headless, driven by puppeteer-core, against
// a live `ggfleet server` with the seed fleet's workers (tests/web/dashboard_test.cc starts them).
// Prints one line per check ("ok ..." or "FAIL ...") and exits non-zero if any failed.
//
// Environment: BASE_URL, ADMIN_KEY, DS_MODEL (the DeepSeek-R1 synthetic model's first shard),
// SMALL_MODEL (a model the CPU build serves quickly), SHOTS_DIR (screenshots), CHROMIUM (the
// browser), WEB_DIR (web/, whose node_modules hold puppeteer-core).
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env("BASE_URL");
const admin = env("ADMIN_KEY");
const shots = env("SHOTS_DIR");
const require = createRequire(`${env("WEB_DIR")}/package.json`);
const puppeteer = require("puppeteer-core");
mkdirSync(shots, { recursive: true });

let failures = 0;
const check = (ok, what, detail = "") => {
  console.log(`${ok ? "ok" : "FAIL"} ${what}${detail ? ` — ${detail}` : ""}`);
  if (!ok) failures++;
};
const api = async (path, init = {}) => {
  const r = await fetch(base + path, {
    ...init,
    headers: {
      Authorization: `Bearer ${admin}`,
      "Content-Type": "application/json",
    },
  });
  return { status: r.status, body: await r.json().catch(() => null) };
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await puppeteer.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  // No network but the server: no proxy, every other host unresolvable.
  args: [
    "--no-sandbox",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
  ],
});
const origin = new URL(base).origin;
const consoleErrors = [];
let expectUnauthorized = false; // the wrong-key step: the browser logs the 401 it asked for
const offsite = [];

async function newPage(width = 1280, height = 900) {
  const page = await browser.newPage();
  await page.setViewport({ width, height });
  await page.setRequestInterception(true);
  page.on("request", (req) => {
    if (
      new URL(req.url()).origin !== origin &&
      !req.url().startsWith("data:")
    ) {
      offsite.push(req.url());
      void req.abort();
    } else {
      void req.continue();
    }
  });
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const text = `${msg.text()} (${msg.location()?.url ?? ""})`;
    if (expectUnauthorized && /401/.test(msg.text())) return;
    consoleErrors.push(text);
  });
  page.on("pageerror", (err) =>
    consoleErrors.push(`page error: ${err.message}`),
  );
  page.on("dialog", (d) => void d.accept());
  return page;
}
const shot = (page, name) =>
  page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
const text = (page, selector) =>
  page.$eval(selector, (e) => e.textContent ?? "");
// Every form control on the page has a label a screen reader can read.
async function labelled(page, what) {
  const unlabelled = await page.$$eval("input, select, textarea", (els) =>
    els
      .filter(
        (e) =>
          !(e.labels && e.labels.length > 0) && !e.getAttribute("aria-label"),
      )
      .map((e) => e.id || e.outerHTML.slice(0, 60)),
  );
  check(
    unlabelled.length === 0,
    `${what}: every control has a label`,
    unlabelled.join(", "),
  );
}

try {
  // A wrong key: a clear message, no way in.
  {
    const page = await newPage();
    await page.goto(`${base}/`, { waitUntil: "networkidle0" });
    await page.type("#api-key", "not-a-key");
    expectUnauthorized = true;
    await page.click("button[type=submit]");
    await page.waitForFunction(
      () => document.querySelector("#signin-error")?.textContent?.length > 0,
    );
    const message = await text(page, "#signin-error");
    expectUnauthorized = false;
    check(
      /not accepted/.test(message) && /invalid API key/.test(message),
      "a wrong key is refused with a clear message",
      message,
    );
    await shot(page, "signin-wrong-key");
    await page.close();
  }

  const page = await newPage();
  await page.goto(`${base}/`, { waitUntil: "networkidle0" });
  await labelled(page, "sign-in");
  await page.type("#api-key", admin);
  await page.keyboard.press("Enter");
  await page.waitForSelector("section.worker");

  // Fleet: both workers, three GPU bars, keyboard reaches the navigation.
  await page.waitForFunction(
    () => document.querySelectorAll("section.worker .gpu .bar").length === 3,
  );
  const workers = await page.$$eval("section.worker", (els) =>
    els.map((e) => e.getAttribute("data-worker")).sort(),
  );
  check(
    JSON.stringify(workers) === '["worker1","worker2"]',
    "the fleet page shows both workers",
    workers.join(","),
  );
  const bars = await page.$$eval("section.worker .gpu .bar", (els) =>
    els.map((e) => e.getAttribute("aria-valuetext")),
  );
  check(
    bars.length === 3 &&
      bars.every((t) => /reserved 1\.00 GiB/.test(t) && /free/.test(t)),
    "three GPU bars with reserved and free memory",
    bars.join(" | "),
  );
  const facts = await text(
    page,
    'section.worker[data-worker="worker1"] dl.facts',
  );
  check(
    /64 cores, 180 GB\/s/.test(facts) && /of 512 GiB/.test(facts),
    "worker1's CPU and RAM as it declared them",
    facts,
  );
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(
    () => document.activeElement?.textContent ?? "",
  );
  check(
    focused.length > 0,
    "Tab moves the keyboard focus through the header",
    focused,
  );
  await shot(page, "fleet-idle");

  // Deploy with a preview: the seed case picks worker1 and says why.
  await page.click('nav a[href="#/deploy"]');
  await page.waitForSelector("#dep-model");
  await labelled(page, "deploy");
  await page.type("#dep-model", env("DS_MODEL"));
  await page.click("form.deploy button[type=submit]");
  await page.waitForSelector("section.plan", { timeout: 60000 });
  const main = await page.$eval("section.plan", (e) =>
    e.getAttribute("data-main-worker"),
  );
  const why = await text(page, "section.plan .why");
  check(
    main === "worker1",
    "the preview of DeepSeek-R1 picks worker1",
    `main ${main}`,
  );
  check(
    /worker2/.test(why) && /faster with worker1/.test(why),
    "the preview says why worker1",
    why,
  );
  const planned = await page.$$eval("section.plan svg.layout g.device", (els) =>
    els.map((e) => e.getAttribute("data-device")),
  );
  check(
    planned.includes("RPC0") && planned.includes("CPU"),
    "the preview draws the GPUs, the RPC GPU and the main's CPU",
    planned.join(","),
  );
  await shot(page, "deploy-preview");
  const picture = await page.$("section.plan svg.layout");
  await picture.screenshot({ path: `${shots}/layout-seed.png` });

  // Whole layers on the CPU instead (experts not allowed in RAM): the picture holds the ranges the
  // planner gives for the same request, the CPU's blocks first.
  await page.click("#dep-experts");
  await page.click("form.deploy button[type=submit]");
  await page.waitForFunction(
    () =>
      document
        .querySelector('section.plan g.device[data-device="CPU"]')
        ?.getAttribute("data-expert-blocks") === "",
    { timeout: 60000 },
  );
  const whole = (
    await api("/v1/plan", {
      method: "POST",
      body: JSON.stringify({
        model: env("DS_MODEL"),
        options: { context: 4096, parallel: 1, expert_offload: false },
        replicas: 1,
      }),
    })
  ).body;
  const cpuOutput = !whole.layout.devices.some((d) => d.has_output);
  const cpuBlocks = whole.layout.cpu_layers - (cpuOutput ? 1 : 0);
  const want = [
    ...whole.layout.devices.map(
      (d) =>
        `${d.name}:${d.first_block}-${d.last_block}${d.has_output ? "+out" : ""}`,
    ),
    `CPU:${cpuBlocks > 0 ? 0 : -1}-${cpuBlocks - 1}${cpuOutput ? "+out" : ""}`,
  ].sort();
  const got = (
    await page.$$eval("section.plan svg.layout g.device", (els) =>
      els.map(
        (e) =>
          `${e.getAttribute("data-device")}:${e.getAttribute("data-first-block")}-${e.getAttribute("data-last-block")}${e.getAttribute("data-output") === "true" ? "+out" : ""}`,
      ),
    )
  ).sort();
  check(
    cpuBlocks > 0 && JSON.stringify(got) === JSON.stringify(want),
    "whole blocks on the CPU are drawn as the planner placed them",
    `${got.join(" ")} vs ${want.join(" ")}`,
  );
  await shot(page, "deploy-preview-whole-blocks");
  await page.click("#dep-experts");

  // Deploy a small model: its page draws the layout with the ranges the API holds.
  await page.$eval("#dep-model", (e) => (e.value = ""));
  await page.type("#dep-model", env("SMALL_MODEL"));
  await page.type("#dep-name", "chat");
  await page.$eval("#dep-context", (e) => (e.value = ""));
  await page.type("#dep-context", "1024");
  await page.click("form.deploy button.primary");
  await page.waitForFunction(() => location.hash === "#/deployments/chat");
  await page.waitForSelector('section.instance[data-state="running"]', {
    timeout: 240000,
  });
  const id = await page.$eval("section.instance", (e) =>
    e.getAttribute("data-instance"),
  );
  const inst = await api(`/v1/instances/${id}`);
  const expected = inst.body.assignment.plan.layout.devices.map((d) => ({
    device: d.name,
    first: String(d.first_block),
    last: String(d.last_block),
    output: String(d.has_output),
  }));
  await page.waitForSelector("section.instance svg.layout g.device");
  const drawn = await page.$$eval(
    "section.instance svg.layout g.device:not(.cpu)",
    (els) =>
      els.map((e) => ({
        device: e.getAttribute("data-device"),
        first: e.getAttribute("data-first-block"),
        last: e.getAttribute("data-last-block"),
        output: e.getAttribute("data-output"),
      })),
  );
  check(
    JSON.stringify(drawn) === JSON.stringify(expected),
    "the deployment page draws the layer ranges of GET /v1/instances/{id}",
    `${JSON.stringify(drawn)} vs ${JSON.stringify(expected)}`,
  );
  await labelled(page, "deployment");

  // The fleet page shows what the instance claims, by name.
  await page.click('nav a[href="#/fleet"]');
  await page.waitForFunction(
    (i) =>
      [...document.querySelectorAll("section.worker .gpu .bar")].some((b) =>
        (b.getAttribute("aria-valuetext") ?? "").includes(i),
      ),
    { timeout: 15000 },
    id,
  );
  check(true, `the fleet page shows the GPU memory ${id} claims`);
  await shot(page, "fleet");
  await page.goto(`${base}/#/deployments/chat`, { waitUntil: "networkidle0" });

  // The playground streams an answer with its time to first token and speed.
  await page.waitForSelector('a[href="#/playground/chat"]');
  await page.click('a[href="#/playground/chat"]');
  await page.waitForSelector("#pg-input");
  await page.waitForFunction(
    () => document.querySelector("#pg-model")?.value === "chat",
  );
  await labelled(page, "playground");
  // A prompt long enough to be measured (32 tokens and more) even when the random model ends its
  // answer at once (one generated token is too few for a generation speed).
  await page.type(
    "#pg-input",
    "Hello, who are you? Tell me about the fleet of machines you run on, the GPUs they hold, " +
      "how the layers of a model are split over them, and why one machine was chosen as the main.",
  );
  await page.$eval("#pg-max", (e) => (e.value = ""));
  await page.type("#pg-max", "24");
  await page.click("form.playground button.primary");
  await page.waitForSelector(".turn.assistant .stats, .turn.assistant .error", {
    timeout: 120000,
  });
  const stats = await text(page, ".turn.assistant");
  check(
    /first token after \d+ ms/.test(stats) && /tokens\/s/.test(stats),
    "the playground streams an answer and shows its speed",
    stats.slice(-120),
  );
  await shot(page, "playground");

  // Back on the deployment: the measured request appears next to the prediction.
  await page.goto(`${base}/#/deployments/chat`, { waitUntil: "networkidle0" });
  const shown = ["[data-measured-generation]", "[data-measured-prompt]"];
  await page.waitForFunction(
    (selectors) =>
      selectors.some((s) =>
        /\d/.test(document.querySelector(s)?.textContent ?? ""),
      ),
    { timeout: 30000 },
    shown,
  );
  const measured = (await Promise.all(shown.map((s) => text(page, s)))).join(
    " | ",
  );
  check(
    /\d.* tokens\/s/.test(measured),
    "the deployment page shows measured speed (generation | prompt) next to the prediction",
    measured,
  );
  await sleep(500);
  await shot(page, "deployment");

  // Events, newest first.
  await page.click('nav a[href="#/events"]');
  await page.waitForSelector(".events-table tbody tr");
  const kinds = await page.$$eval(".events-table tbody tr td.kind", (els) =>
    els.map((e) => e.textContent),
  );
  check(
    kinds.includes("instance.running"),
    "the events page lists the instance events",
    kinds.slice(0, 5).join(","),
  );
  await page.type("#ev-filter", "instance.running");
  const filtered = await page.$$eval(".events-table tbody tr td.kind", (els) =>
    els.map((e) => e.textContent),
  );
  check(
    filtered.length > 0 && filtered.every((k) => k === "instance.running"),
    "the events filter keeps matching rows only",
    filtered.join(","),
  );
  await shot(page, "events");

  // API keys: create one (its secret shown once), revoke it.
  await page.click('nav a[href="#/keys"]');
  await page.waitForSelector("#key-name");
  await labelled(page, "keys");
  await page.type("#key-name", "browser-made");
  await page.click("button.primary");
  await page.waitForSelector(".secret code");
  const secret = await text(page, ".secret code");
  const who = await fetch(`${base}/v1/whoami`, {
    headers: { Authorization: `Bearer ${secret}` },
  }).then((r) => r.json());
  check(
    who.name === "browser-made" && who.role === "user",
    "a key made on the keys page works",
    JSON.stringify(who),
  );
  await shot(page, "keys");
  await page.click('button[aria-label="Revoke browser-made"]');
  await page.waitForFunction(
    () => !document.querySelector('button[aria-label="Revoke browser-made"]'),
  );
  const revoked = await fetch(`${base}/v1/whoami`, {
    headers: { Authorization: `Bearer ${secret}` },
  });
  check(
    revoked.status === 401,
    "a revoked key stops working",
    `status ${revoked.status}`,
  );

  // Delete the deployment from its page.
  await page.goto(`${base}/#/deployments/chat`, { waitUntil: "networkidle0" });
  await page.waitForSelector("button.danger");
  await page.click("button.danger");
  await page.waitForFunction(() => location.hash === "#/deployments");
  let gone = false;
  for (let i = 0; i < 50 && !gone; i++) {
    gone = (await api("/v1/deployments/chat")).status === 404;
    if (!gone) await sleep(200);
  }
  check(gone, "delete removes the deployment");

  // A phone's width: nothing runs off the side of the fleet page.
  const phone = await newPage(390, 844);
  await phone.goto(`${base}/`, { waitUntil: "networkidle0" });
  await phone.type("#api-key", admin);
  await phone.keyboard.press("Enter");
  await phone.waitForSelector("section.worker .gpu .bar");
  const overflow = await phone.evaluate(
    () => document.documentElement.scrollWidth - window.innerWidth,
  );
  check(
    overflow <= 1,
    "the fleet page fits a phone width",
    `overflow ${overflow} px`,
  );
  await shot(phone, "fleet-phone");
  // and the preview with its layout picture and tables.
  await phone.click('nav a[href="#/deploy"]');
  await phone.waitForSelector("#dep-model");
  await phone.type("#dep-model", env("DS_MODEL"));
  await phone.click("form.deploy button[type=submit]");
  await phone.waitForSelector("section.plan svg.layout", { timeout: 60000 });
  const wide = await phone.evaluate(
    () => document.documentElement.scrollWidth - window.innerWidth,
  );
  check(wide <= 1, "the preview fits a phone width", `overflow ${wide} px`);
  await shot(phone, "deploy-preview-phone");
} catch (e) {
  check(false, "the browser run", e.stack ?? String(e));
} finally {
  await browser.close();
}
check(
  consoleErrors.length === 0,
  "no console errors",
  consoleErrors.join(" | "),
);
check(offsite.length === 0, "no request leaves the server", offsite.join(" "));
process.exit(failures === 0 ? 0 : 1);
