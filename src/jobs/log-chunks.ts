// Turns a child's raw output into text chunks for the channel: UTF-8 decoded as a stream (a
// character split across two reads is held back until it is whole; bytes that are not UTF-8
// become U+FFFD) and never more than MAX_LOG_CHUNK_BYTES of output per chunk, which bounds
// the work per message. This size is of raw output: escaped in JSON a chunk can grow up to 6x,
// so the channel's state machine splits it again to fit the frame limit in force
// (src/channel/frame-fit.ts).
//
// This does its own carry instead of using StringDecoder: StringDecoder prepends its hidden
// leftover bytes to the next read, which could push a chunk a few bytes past the limit.

export const MAX_LOG_CHUNK_BYTES = 64 * 1024;

export type LogStream = "stdout" | "stderr";
export interface LogChunk {
  stream: LogStream;
  data: string;
}

export interface LogChunker {
  write(bytes: Buffer): void;
  /** Emits what is still held back (an incomplete character becomes U+FFFD). */
  end(): void;
}

export function createLogChunker(
  stream: LogStream,
  emit: (chunk: LogChunk) => void,
  maxBytes = MAX_LOG_CHUNK_BYTES,
): LogChunker {
  let carry: Buffer = Buffer.alloc(0);
  return {
    write(bytes) {
      const buf = carry.length === 0 ? bytes : Buffer.concat([carry, bytes]);
      const usable = buf.length - countIncompleteTail(buf);
      let start = 0;
      while (start < usable) {
        const end = start + findCut(buf.subarray(start, usable), maxBytes);
        emit({ stream, data: buf.toString("utf8", start, end) });
        start = end;
      }
      carry = Buffer.from(buf.subarray(usable)); // a copy: at most 3 bytes
    },
    end() {
      if (carry.length > 0) emit({ stream, data: carry.toString("utf8") });
      carry = Buffer.alloc(0);
    },
  };
}

const isContinuation = (byte: number | undefined) => byte !== undefined && (byte & 0xc0) === 0x80;

/** How many bytes at the end of `buf` start a character that is not complete yet (0-3). */
function countIncompleteTail(buf: Buffer): number {
  for (let back = 1; back <= Math.min(3, buf.length); back++) {
    const byte = buf[buf.length - back] as number;
    if (isContinuation(byte)) continue;
    const length = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
    return length > back ? back : 0;
  }
  return 0; // only continuation bytes: invalid text, let the decoder replace it
}

/** The largest cut at or below `limit` that does not fall inside a character. */
function findCut(buf: Buffer, limit: number): number {
  if (buf.length <= limit) return buf.length;
  let cut = limit;
  while (cut > limit - 3 && isContinuation(buf[cut])) cut--;
  return isContinuation(buf[cut]) ? limit : cut; // invalid text: cut anywhere
}
