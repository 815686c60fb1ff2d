// Drives a real headless chromium (Debian's /usr/bin/chromium, through playwright-core) on one
// page for an end-to-end test written in Rust: the test starts this script, then sends one
// command per line on stdin and reads one JSON line per command on stdout.
//
//   node page_driver.mjs URL [CHROMIUM]
//   stdin:  "snapshot"  -> the page's state (below)
//           "quit"      -> closes the browser and exits
//
// A snapshot reads the graph page's DOM as a user sees it: the SVG's nodes and edges, the edge
// table's rows, the recent denials list, the page's update counter; plus everything the page
// did wrong since it was opened: console errors, uncaught exceptions, failed requests and HTTP
// error answers, and how many times the main frame navigated (a reload counts).

import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, executable = "/usr/bin/chromium"] = process.argv.slice(2);
if (!url) {
  process.stderr.write("usage: node page_driver.mjs URL [CHROMIUM]\n");
  process.exit(2);
}

const problems = [];
let navigations = 0;
const profile = mkdtempSync(join(tmpdir(), "amesh-chromium-"));
let context;

async function main() {
  // A fresh profile, and nothing of chromium's own that would talk to the network or add
  // requests the page did not make.
  context = await chromium.launchPersistentContext(profile, {
    executablePath: executable,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`uncaught exception: ${e.message}`));
  page.on("requestfailed", (r) =>
    problems.push(`request failed: ${r.url()}: ${r.failure()?.errorText}`),
  );
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });
  page.on("framenavigated", (f) => {
    if (f === page.mainFrame()) navigations += 1;
  });
  await page.goto(url);
  // A mark on the window object: gone if the page were reloaded.
  await page.evaluate(() => {
    window.__ameshMark = "first-load";
  });

  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    const cmd = line.trim();
    if (cmd === "quit") break;
    if (cmd !== "snapshot") {
      reply({ error: `unknown command ${JSON.stringify(cmd)}` });
      continue;
    }
    const dom = await page.evaluate(() => {
      const all = (sel) => Array.from(document.querySelectorAll(sel));
      return {
        mark: window.__ameshMark ?? null,
        updates: Number(document.getElementById("status")?.dataset.updates ?? 0),
        status: document.getElementById("status")?.textContent ?? "",
        nodes: all("#graph g.node").map((g) => g.dataset.node),
        edges: all("#graph g.edge").map((g) => ({
          source: g.dataset.source,
          destination: g.dataset.destination,
          denied: Number(g.dataset.denied),
          label: g.querySelector("text")?.textContent ?? "",
        })),
        rows: all("#edges tbody tr").map((tr) => ({
          source: tr.dataset.source,
          destination: tr.dataset.destination,
          denied: Number(tr.dataset.denied),
          recentDenials: Number(tr.dataset.recentDenials),
          cells: Array.from(tr.children).map((td) => td.textContent),
        })),
        denials: all("#denials li").map((li) => ({
          source: li.dataset.source,
          destination: li.dataset.destination,
          text: li.textContent,
        })),
        scrapeErrors: all("#errors li").map((li) => li.textContent),
      };
    });
    reply({ ...dom, navigations, problems });
  }
}

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function close() {
  try {
    if (context) await context.close();
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}

try {
  await main();
  await close();
} catch (e) {
  process.stderr.write(`page driver: ${e.stack ?? e}\n`);
  await close().catch(() => {});
  process.exit(1);
}
