// The graphics scan's own process: `node graphics-probe.js` prints si.graphics() as JSON and
// exits. The daemon runs it rather than loading systeminformation itself, which would stay in
// its memory for good (its sources and objects, ~2 MB of an idle daemon's RSS) for a scan that
// runs a few times an hour (graphics.ts says when).
import si from "systeminformation";

process.stdout.write(JSON.stringify(await si.graphics()));
