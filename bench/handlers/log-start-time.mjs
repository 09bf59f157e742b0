// A no-op module job that logs the moment it starts, on the monotonic clock every process on
// the machine shares (process.hrtime), so the dispatch benchmark can time "started" inside the
// worker rather than when the control plane hears of it.
export default function logStartTime(_payload, context) {
  context.log(String(process.hrtime.bigint()));
}
