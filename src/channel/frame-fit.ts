// Makes the runner's frames fit the limit in force (`welcome.maxFrameBytes`), measured as the
// control plane measures it: the UTF-8 bytes of the encoded JSON text, escapes included. A
// chunk of output full of control characters grows up to 6x on the wire (\u0001), so the
// split counts each character's encoded size, not its raw bytes. Pure functions: the state
// machine calls them, and they are tested without sockets.
import { capText } from "../log/cap-text.js";
import { encode, type JobRef, type JobResult, type RunnerMessage } from "../protocol/channel.js";

export type LogFrame = Extract<RunnerMessage, { type: "log" }>;
type ResultFrame = Extract<RunnerMessage, { type: "result" }>;
type RejectFrame = Extract<RunnerMessage, { type: "reject" }>;

/** The UTF-8 size of one character inside a JSON string as JSON.stringify writes it; `width` is 2 for a surrogate pair. */
function encodedCharAt(text: string, i: number): { bytes: number; width: 1 | 2 } {
  const code = text.charCodeAt(i);
  if (code === 0x22 || code === 0x5c) return { bytes: 2, width: 1 }; // \" and \\
  if (code === 0x08 || code === 0x09 || code === 0x0a || code === 0x0c || code === 0x0d) return { bytes: 2, width: 1 }; // \b \t \n \f \r
  if (code < 0x20) return { bytes: 6, width: 1 }; // \u00XX
  if (code < 0x80) return { bytes: 1, width: 1 };
  if (code < 0x800) return { bytes: 2, width: 1 };
  if (code >= 0xd800 && code <= 0xdbff) {
    const next = text.charCodeAt(i + 1);
    if (next >= 0xdc00 && next <= 0xdfff) return { bytes: 4, width: 2 };
    return { bytes: 6, width: 1 }; // a lone surrogate is written as \uXXXX
  }
  if (code >= 0xdc00 && code <= 0xdfff) return { bytes: 6, width: 1 };
  return { bytes: 3, width: 1 };
}

/** The UTF-8 bytes `text` takes inside a JSON string (without the quotes). */
export function encodedStringBytes(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length;) {
    const char = encodedCharAt(text, i);
    bytes += char.bytes;
    i += char.width;
  }
  return bytes;
}

/**
 * Splits one chunk of a job's output into pieces whose `log` frames each fit `maxFrameBytes`,
 * whatever `seq` they get. Nothing is dropped, no character (or surrogate pair) is cut, and
 * the pieces joined are `data`.
 */
export function splitLogData(ref: JobRef, stream: LogFrame["stream"], data: string, maxFrameBytes: number): string[] {
  // The envelope with the largest seq a frame can carry: a bound for every piece's frame.
  const envelope: LogFrame = { type: "log", ...ref, seq: Number.MAX_SAFE_INTEGER, stream, data: "" };
  const budget = maxFrameBytes - Buffer.byteLength(encode(envelope));
  if (encodedStringBytes(data) <= budget) return [data];
  const pieces: string[] = [];
  let start = 0;
  let bytes = 0;
  for (let i = 0; i < data.length;) {
    const char = encodedCharAt(data, i);
    // A piece always takes at least one character, so the split ends even if the budget is
    // absurdly small (it cannot be: a 128-char job id leaves over 100 bytes in 1024).
    if (bytes + char.bytes > budget && i > start) {
      pieces.push(data.slice(start, i));
      start = i;
      bytes = 0;
    }
    bytes += char.bytes;
    i += char.width;
  }
  if (start < data.length) pieces.push(data.slice(start));
  return pieces;
}

/**
 * The `result` frame for `result`, made to fit `maxFrameBytes`: only the free-text `reason`
 * can be long (up to 4096 characters, each up to 6 bytes escaped), so an over-long one is cut
 * with a marker that says how much was cut. The outbox keeps the whole result.
 */
export function fitResultFrame(result: JobResult, maxFrameBytes: number): ResultFrame {
  const reason = result.reason;
  if (reason === null) return { type: "result", result };
  return fitReason(reason, Infinity, maxFrameBytes, (cut) => ({ type: "result", result: { ...result, reason: cut } }));
}

/** The protocol's longest `reject` reason. */
export const MAX_REJECT_REASON_CHARS = 1024;

/**
 * The `reject` frame of `ref`, its reason cut to the protocol's 1024 characters and to
 * `maxFrameBytes`: a reason can name the work dir (`low disk: … for <dir>`), of any length.
 * Sent whole, a longer one would be refused (`error` `invalid`, or 1009), and the job would
 * stay with this runner, which does not run it, for as long as it stays connected.
 */
export function fitRejectFrame(ref: JobRef, reason: string, maxFrameBytes: number): RejectFrame {
  return fitReason(reason, MAX_REJECT_REASON_CHARS, maxFrameBytes, (cut) => ({ type: "reject", ...ref, reason: cut }));
}

/** `build(reason)` when it fits; else built with the longest start of `reason` that fits, and a marker. */
function fitReason<Frame extends RunnerMessage>(
  reason: string,
  maxChars: number,
  maxFrameBytes: number,
  build: (reason: string) => Frame,
): Frame {
  const fits = (frame: Frame, text: string) =>
    text.length <= maxChars && Buffer.byteLength(encode(frame)) <= maxFrameBytes;
  const whole = build(reason);
  if (fits(whole, reason)) return whole;
  // The longest prefix that fits, by bisection (capText's marker grows a little as the cut grows).
  let low = 0;
  let high = reason.length;
  while (low < high) {
    const mid = Math.ceil((low + high) / 2);
    const text = capText(reason, mid);
    if (fits(build(text), text)) low = mid;
    else high = mid - 1;
  }
  return build(capText(reason, low));
}
