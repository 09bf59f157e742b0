// A database URL as logs, errors and the CLI may show it. Its own small file: the
// control-plane verb imports it without loading any store code.

/** Where the URL points, without user or password. */
export function describeDatabaseUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
  } catch {
    return "(an unparsable database URL)";
  }
}
