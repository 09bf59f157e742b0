// Text that came from the network is capped before it reaches a log line or an error frame:
// a peer could otherwise turn one large frame into a log line of the same size (or larger,
// once escaped), and a few such frames into a full disk.

/** The most characters of a peer's text that a log line or error message keeps (the protocol's longest reason). */
export const MAX_WIRE_TEXT_CHARS = 1024;

/** `text` when short enough, else its start and a marker that says how much was cut. */
export function capText(text: string, max = MAX_WIRE_TEXT_CHARS): string {
  if (text.length <= max) return text;
  // Do not cut a surrogate pair in half: the log would hold a lone surrogate.
  const end = isHighSurrogate(text.charCodeAt(max - 1)) ? max - 1 : max;
  return `${text.slice(0, end)}… [${text.length - end} more chars]`;
}

const isHighSurrogate = (code: number) => code >= 0xd800 && code <= 0xdbff;
