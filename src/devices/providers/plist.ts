// A reader of Apple's XML property lists, as `ioreg -a` prints them: dict, array, string,
// integer, real, true/false, data (kept as its base64 text) and date (kept as text). Pure; no
// dependency (the `plist` package is a dev dependency only). Anything else is an error that
// says where.
export type PlistValue = string | number | boolean | PlistValue[] | { [key: string]: PlistValue };

/** Tags and text between them; comments, the XML declaration and the DOCTYPE are skipped. */
const TOKEN = /<!--[\s\S]*?-->|<\?[\s\S]*?\?>|<!DOCTYPE[^>]*>|<(\/?)([A-Za-z]+)[^>]*?(\/?)>|([^<]+)/g;

interface Tag {
  kind: "open" | "close" | "empty";
  name: string;
  at: number;
}

export function parsePlist(xml: string): PlistValue {
  const tokens: (Tag | string)[] = [];
  for (const match of xml.matchAll(TOKEN)) {
    const [, slash, name, selfClosing, text] = match;
    if (text !== undefined) {
      if (text.trim() !== "") tokens.push(text);
    } else if (name !== undefined) {
      tokens.push({ kind: slash ? "close" : selfClosing ? "empty" : "open", name, at: match.index });
    }
  }
  let position = 0;
  const fail = (message: string): never => {
    const token = tokens[position];
    const where = token === undefined ? "at the end" : typeof token === "string" ? "in text" : `at offset ${token.at}`;
    throw new Error(`not a property list: ${message} ${where}`);
  };
  const next = () => tokens[position++];
  const expectClose = (name: string) => {
    const token = next();
    if (typeof token !== "object" || token.kind !== "close" || token.name !== name) fail(`expected </${name}>`);
  };
  /** Whether the next token closes `name`; if so, it is consumed. */
  const closes = (name: string): boolean => {
    const head = tokens[position];
    if (typeof head !== "object" || head.kind !== "close" || head.name !== name) return false;
    position++;
    return true;
  };
  const textUntilClose = (name: string): string => {
    const token = tokens[position];
    if (typeof token === "string") {
      position++;
      expectClose(name);
      return decodeEntities(token);
    }
    expectClose(name);
    return "";
  };

  const readValue = (): PlistValue => {
    const token = next();
    if (typeof token !== "object" || token.kind === "close") return fail("expected a value");
    const empty = token.kind === "empty";
    switch (token.name) {
      case "dict": {
        const dict: { [key: string]: PlistValue } = {};
        while (!empty && !closes("dict")) {
          const key = next();
          if (typeof key !== "object" || key.name !== "key") return fail("expected <key>");
          const name = key.kind === "empty" ? "" : textUntilClose("key");
          dict[name] = readValue();
        }
        return dict;
      }
      case "array": {
        const array: PlistValue[] = [];
        while (!empty && !closes("array")) array.push(readValue());
        return array;
      }
      case "string":
      case "data":
      case "date": {
        const text = empty ? "" : textUntilClose(token.name);
        return token.name === "data" ? text.replace(/\s+/g, "") : text;
      }
      case "integer":
      case "real": {
        const text = empty ? "" : textUntilClose(token.name).trim();
        const value = /^-?0x[0-9a-f]+$/i.test(text) ? Number.parseInt(text, 16) : Number(text);
        return Number.isFinite(value) && text !== "" ? value : fail(`<${token.name}> "${text.slice(0, 40)}"`);
      }
      case "true":
      case "false":
        if (!empty) expectClose(token.name);
        return token.name === "true";
      case "plist": {
        const value = readValue();
        if (!empty) expectClose("plist");
        return value;
      }
      default:
        return fail(`unexpected <${token.name}>`);
    }
  };
  const value = readValue();
  if (position < tokens.length) fail("text after the value");
  return value;
}

function decodeEntities(text: string): string {
  return text.replace(/&(lt|gt|amp|quot|apos|#x[0-9a-f]+|#\d+);/gi, (entity, name: string) => {
    const lower = name.toLowerCase();
    if (lower.startsWith("#x")) return String.fromCodePoint(Number.parseInt(lower.slice(2), 16));
    if (lower.startsWith("#")) return String.fromCodePoint(Number(lower.slice(1)));
    return { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" }[lower] ?? entity;
  });
}
