// A module handler: imported once by a warm worker, called once per job. The control plane
// names it ("hello"); the runner's `handlers` setting maps that name to this file.
export default async function hello(payload, { log, jobId }) {
  log(`hello, ${payload?.name ?? "world"}, from worker ${process.pid} (job ${jobId})`);
}
