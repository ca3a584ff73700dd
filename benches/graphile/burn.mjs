// Graphile Worker side of `cargo bench --bench all`: bulk-inserts N no-op jobs with addJobs
// (1,000 per call, like vsm's insert_all batches), then burns them down with one runner in
// its batched configuration (localQueue 500, batched completion), and prints one JSON line:
// {"insert_per_sec": .., "burn_per_sec": ..}. With `insert-only` it stops after the insert
// (`burn_per_sec` null).
//
//     node burn.mjs <postgres url> <jobs> [insert-only]
import { makeWorkerUtils, run } from "graphile-worker";

const [connectionString, count] = [process.argv[2], Number(process.argv[3] ?? 100000)];
const utils = await makeWorkerUtils({ connectionString });
await utils.migrate();

const batch = Array.from({ length: 1000 }, () => ({ identifier: "noop", payload: {} }));
const inserting = performance.now();
for (let left = count; left > 0; left -= batch.length) {
  await utils.addJobs(left >= batch.length ? batch : batch.slice(0, left));
}
const insertSecs = (performance.now() - inserting) / 1000;
if (process.argv[4] === "insert-only") {
  await utils.release();
  console.log(JSON.stringify({ insert_per_sec: count / insertSecs, burn_per_sec: null }));
  process.exit(0);
}

let done = 0;
let finished;
const allDone = new Promise((resolve) => (finished = resolve));
const started = performance.now();
const runner = await run({
  connectionString,
  concurrency: 10,
  noHandleSignals: true,
  pollInterval: 100,
  taskList: { noop: async () => {} },
  preset: {
    worker: {
      localQueue: { size: 500 },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    },
  },
});
runner.events.on("job:complete", () => {
  done += 1;
  if (done === count) finished();
});
await allDone;
const burnSecs = (performance.now() - started) / 1000;
await runner.stop();
await utils.release();
console.log(JSON.stringify({ insert_per_sec: count / insertSecs, burn_per_sec: count / burnSecs }));
