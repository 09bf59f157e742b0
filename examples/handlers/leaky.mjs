// A handler that leaks on purpose: each job keeps `mb` megabytes for ever. Its worker grows
// until the pool recycles it at a job boundary, and the next job gets a fresh worker.
const kept = [];

export default async function leaky(payload, { log }) {
  kept.push(Buffer.alloc((payload?.mb ?? 50) * 1024 * 1024, 1));
  log(`worker ${process.pid} now holds ${kept.length * (payload?.mb ?? 50)} MB`);
}
