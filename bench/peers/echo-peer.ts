// The other end of the dispatch benchmark's floor measurements, in its own process: it echoes
// every IPC message back to its parent, and, given a ws:// URL, every WebSocket frame too.
import WebSocket from "ws";

const url = process.argv[2];
process.on("message", (message) => process.send!(message));
if (url) {
  const socket = new WebSocket(url, { perMessageDeflate: false });
  socket.on("message", (data) => socket.send(data.toString()));
}
process.on("disconnect", () => process.exit(0));
