// The web UI in a real browser (Debian's Chromium driven by playwright-core), against real
// nodes started by tests/tests/e2e/ui.rs, which passes what it set up as JSON in argv[2]:
// {api: node B's address (the page's node), peer_a, iris, minilm, hostile, iris_hash (the
// output hash `moxnet call` printed for the same input), shots (a folder for screenshots)}.
// Each check throws with what it saw; the script exits 1 on the first failure, 0 when all hold.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const setup = JSON.parse(process.argv[2]);
const base = "http://" + setup.api;
mkdirSync(setup.shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
const problems = [];
const check = (ok, what) => {
  if (!ok) throw new Error(what);
};

async function open(viewport, scheme) {
  const page = await browser.newPage({ viewport, colorScheme: scheme });
  page.on("console", (m) => {
    if (m.type() === "error") problems.push("console: " + m.text());
  });
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });
  page.on("dialog", async (d) => {
    problems.push("a dialog opened (an injected script ran): " + d.message());
    await d.dismiss();
  });
  return page;
}

const rows = (page) => page.$$eval("#catalogue tbody tr[data-model]", (trs) => trs.map((t) => t.dataset.model));
// From the top: a full-page picture taken scrolled down shows the sticky header mid-page.
const shot = async (page, name) => {
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: `${setup.shots}/${name}.png`, fullPage: true });
};

let page;
try {
  page = await open({ width: 1280, height: 900 }, "light");

  // Catalogue: every published model is listed; search and sort change the rows.
  await page.goto(base + "/");
  const all = await rows(page);
  for (const id of [setup.iris, setup.minilm, setup.hostile]) check(all.includes(id), `the catalogue lacks ${id}: ${all}`);
  await shot(page, "catalogue");
  await page.fill("input[name=q]", "iris");
  await Promise.all([page.waitForNavigation(), page.click("form.search button")]);
  check(page.url().includes("q=iris"), "the search is in the URL: " + page.url());
  const found = await rows(page);
  check(found.length >= 1 && found[0] === setup.iris && !found.includes(setup.minilm), `searching "iris" gave ${found}`);
  await page.goto(base + "/?sort=new");
  const newest = await rows(page);
  await page.goto(base + "/?tag=embeddings");
  const tagged = await rows(page);
  check(tagged.length === 1 && tagged[0] === setup.minilm, `the tag filter gave ${tagged}`);

  // A manifest that carries a script: shown as text, never run.
  await page.goto(base + "/m/" + setup.hostile);
  check((await page.evaluate(() => window.__pwned)) === undefined, "the injected script ran");
  check((await page.textContent(".description")).includes("<script>window.__pwned=1</script>"), "the hostile description is shown as text");
  check((await page.textContent("dl.facts")).includes("<img src=x"), "the hostile author is shown as text");
  await shot(page, "model-hostile");

  // The model page: manifest, interface, history chart with the snapshot metrics.
  await page.goto(base + "/m/" + setup.iris);
  await page.waitForSelector("#charts canvas");
  const metrics = await page.$$eval("#charts [data-metric]", (cs) => cs.map((c) => c.dataset.metric));
  check(metrics.includes("loss") && metrics.includes("accuracy"), "charts for " + metrics);
  check((await page.$$("#charts canvas")).length >= 2, "a canvas per metric");
  check((await page.textContent("#interface")).includes("features"), "the interface table");
  await shot(page, "model");

  // The call form: the same output hash as `moxnet call`.
  const cells = await page.$$("#in-features input");
  check(cells.length === 4, `4 number fields, got ${cells.length}`);
  for (const [i, v] of ["5.1", "3.5", "1.4", "0.2"].entries()) await cells[i].fill(v);
  await page.selectOption("#call-form select[name=on]", setup.peer_a);
  await page.click("#call-form button[type=submit]");
  await page.waitForSelector("#call-facts, #call-error", { timeout: 60000 });
  const error = await page.$("#call-error");
  check(!error, "the call failed: " + (error && (await error.textContent())));
  const hash = await page.textContent("[data-fact='output hash']");
  check(hash === setup.iris_hash, `the form's output hash ${hash} is not moxnet call's ${setup.iris_hash}`);
  const ran = await page.textContent("[data-fact='ran on']");
  check(ran === setup.peer_a, `it ran on ${ran}, not on A`);
  await shot(page, "model-called");

  // A vote (up on the model lowest in score order that B paid to call) changes its score and
  // the order.
  await page.goto(base + "/?sort=score");
  const before = await rows(page);
  const target = before.indexOf(setup.iris) > before.indexOf(setup.minilm) ? setup.iris : setup.minilm;
  check(before[0] !== target, `${target} already leads: ${before}`);
  await page.goto(base + "/m/" + target);
  const scoreBefore = (await page.textContent("#score")).trim();
  await Promise.all([page.waitForNavigation(), page.click("#votes button[value=up]")]);
  const scoreAfter = (await page.textContent("#score")).trim();
  check(Number(scoreAfter) > 0 && scoreAfter !== scoreBefore, `score ${scoreBefore} -> ${scoreAfter}`);
  await page.goto(base + "/?sort=score");
  const after = await rows(page);
  check(after[0] === target, `after the vote the order is ${after}`);
  await shot(page, "catalogue-after-vote");

  // Network: the other node and its offer.
  await page.goto(base + "/network");
  check((await page.textContent("#peers")).includes(setup.peer_a), "A among the peers");
  const offer = await page.$(`#offers tr[data-peer='${setup.peer_a}']`);
  check(offer, "A's offer on the network page");
  check((await offer.textContent()).includes("wasm"), "the offer lists its engines");
  await shot(page, "network");

  check(await page.$(`#fetches a[href='/m/${setup.iris}']`), "B's fetch of the iris model on the network page");
  check((await page.$$("#fetches progress")).length >= 1, "a progress bar per fetch");

  // Credits: B owes A for its calls; the balance chart draws them.
  await page.goto(base + "/credits");
  check((await page.textContent("#credits")).includes(setup.peer_a.slice(0, 12)), "A's account");
  await page.waitForSelector("#balance-chart canvas");
  await shot(page, "credits");
  await page.goto(base + "/node");
  check((await page.textContent("#limits")).includes("calls at once"), "the node's limits");
  await shot(page, "node");

  // The language model's chat: B holds only its manifest, so it generates on A, streamed.
  await page.goto(base + "/m/" + setup.llm);
  await page.fill("#chat-form textarea", "What is the capital of France? Answer in one word.");
  await page.click("#chat-form button[type=submit]");
  await page.waitForFunction(() => /tokens/.test(document.getElementById("chat-status").textContent), null, { timeout: 120000 });
  const answer = await page.textContent("#chat-log .msg.assistant");
  check(answer.trim().length > 0 && !(await page.$("#chat-log .msg.bad")), "the chat's answer: " + answer);
  const status = await page.textContent("#chat-status");
  check(status.includes(setup.peer_a), "generated on A: " + status);
  await shot(page, "model-chat");

  // Phone width, dark: every page again.
  const phone = await open({ width: 390, height: 844 }, "dark");
  for (const [name, path] of [["catalogue", "/"], ["model", "/m/" + setup.iris], ["network", "/network"], ["credits", "/credits"], ["node", "/node"]]) {
    await phone.goto(base + path);
    if (name === "model") await phone.waitForSelector("#charts canvas");
    await shot(phone, name + "-phone-dark");
  }
  check(newest.length >= 3, "the newest-first order lists every model");
  check(problems.length === 0, "no console errors: " + problems.join("; "));
  console.log("ui: every check passed; screenshots in " + setup.shots);
  await browser.close();
} catch (e) {
  // What the page showed when it failed, for the report.
  const shown = page ? await page.evaluate(() => document.body.innerText).catch(() => "") : "";
  if (page) await shot(page, "failure").catch(() => {});
  console.error("ui: " + e.message + (problems.length ? "\n  also: " + problems.join("; ") : "") +
    "\n  at " + (page ? page.url() : "?") + ":\n" + shown.slice(0, 2000));
  await browser.close();
  process.exit(1);
}
