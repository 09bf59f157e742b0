// A small, strict parser of Prometheus's text exposition format (version 0.0.4), for tests
// that scrape /metrics: it throws on anything the format does not allow (a sample before its
// TYPE, a repeated series, a bad label or value, a histogram whose buckets are not cumulative
// or lack +Inf), so a test that parses the output has checked its form too.

export type MetricType = "counter" | "gauge" | "histogram" | "summary" | "untyped";

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  type: MetricType;
  help: string | null;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES: readonly string[] = ["counter", "gauge", "histogram", "summary", "untyped"];
/** The families whose # TYPE line has been read. */
const typed = new WeakSet<Family>();

export function parseExposition(text: string): Map<string, Family> {
  if (text.length > 0 && !text.endsWith("\n")) throw new Error("the exposition does not end with a newline");
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  const lines = text.split("\n");
  lines.forEach((line, i) => {
    const at = `line ${i + 1} (${JSON.stringify(line)})`;
    if (line.trim() === "") return;
    if (line.startsWith("#")) return comment(line, at, families);
    const sample = parseSample(line, at);
    const family = familyOf(sample.name, families);
    if (!family) throw new Error(`${at}: a sample of ${sample.name} before its # TYPE`);
    const key = sample.name + JSON.stringify(Object.entries(sample.labels).sort());
    if (seen.has(key)) throw new Error(`${at}: the series is repeated`);
    seen.add(key);
    family.samples.push(sample);
  });
  for (const family of families.values()) if (family.type === "histogram") checkHistogram(family);
  return families;
}

function comment(line: string, at: string, families: Map<string, Family>): void {
  const match = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
  if (!match) return; // any other comment is allowed
  const [, kind, name, rest = ""] = match;
  if (!NAME.test(name!)) throw new Error(`${at}: bad metric name`);
  const family = families.get(name!) ?? { name: name!, type: "untyped" as MetricType, help: null, samples: [] };
  if (kind === "HELP") {
    if (family.help !== null) throw new Error(`${at}: a second HELP for ${name}`);
    family.help = rest.replace(/\\(\\|n)/g, (_m, c: string) => (c === "n" ? "\n" : "\\"));
  } else {
    if (families.has(name!) && (family.samples.length > 0 || typed.has(family)))
      throw new Error(`${at}: TYPE for ${name} after its samples or a second time`);
    if (!TYPES.includes(rest)) throw new Error(`${at}: unknown type ${rest}`);
    family.type = rest as MetricType;
    typed.add(family);
  }
  families.set(name!, family);
}

function familyOf(sampleName: string, families: Map<string, Family>): Family | undefined {
  const direct = families.get(sampleName);
  if (direct && typed.has(direct)) return direct;
  const base = /^(.*)_(bucket|sum|count)$/.exec(sampleName)?.[1];
  const family = base === undefined ? undefined : families.get(base);
  if (family && typed.has(family) && (family.type === "histogram" || family.type === "summary")) return family;
  return undefined;
}

function parseSample(line: string, at: string): Sample {
  const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)(?: (-?\d+))?$/.exec(line);
  if (!match) throw new Error(`${at}: not a sample line`);
  const [, name, labelText, valueText] = match;
  return { name: name!, labels: labelText ? parseLabels(labelText, at) : {}, value: parseValue(valueText!, at) };
}

function parseLabels(text: string, at: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let rest = text.slice(1, -1);
  while (rest.length > 0) {
    const match = /^([^=]+)="((?:[^"\\]|\\[\\"n])*)"(,?)/.exec(rest);
    if (!match) throw new Error(`${at}: bad labels`);
    const [whole, name, raw, comma] = match;
    if (!LABEL_NAME.test(name!)) throw new Error(`${at}: bad label name ${name}`);
    if (name! in labels) throw new Error(`${at}: label ${name} twice`);
    labels[name!] = raw!.replace(/\\([\\"n])/g, (_m, c: string) => (c === "n" ? "\n" : c));
    rest = rest.slice(whole!.length);
    if (comma === "" && rest.length > 0) throw new Error(`${at}: labels not separated by a comma`);
  }
  return labels;
}

function parseValue(text: string, at: string): number {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (text === "NaN") return NaN;
  if (!/^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`${at}: bad value ${text}`);
  return Number(text);
}

function checkHistogram(family: Family): void {
  const groups = new Map<string, { buckets: [number, number][]; count: number | null }>();
  for (const sample of family.samples) {
    const { le, ...rest } = sample.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    const group = groups.get(key) ?? { buckets: [], count: null };
    groups.set(key, group);
    if (sample.name === `${family.name}_bucket`) {
      if (le === undefined) throw new Error(`${family.name}: a bucket without le`);
      group.buckets.push([parseValue(le, `${family.name} le`), sample.value]);
    } else if (sample.name === `${family.name}_count`) group.count = sample.value;
    else if (sample.name !== `${family.name}_sum`) throw new Error(`${family.name}: unexpected series ${sample.name}`);
  }
  for (const { buckets, count } of groups.values()) {
    const sorted = [...buckets].sort((a, b) => a[0] - b[0]);
    if (sorted.at(-1)?.[0] !== Infinity) throw new Error(`${family.name}: no +Inf bucket`);
    sorted.forEach(([, value], i) => {
      if (i > 0 && value < sorted[i - 1]![1]) throw new Error(`${family.name}: buckets are not cumulative`);
    });
    if (count !== sorted.at(-1)![1]) throw new Error(`${family.name}: _count is not the +Inf bucket`);
  }
}

/** The value of the one sample named `name` whose labels include `labels` (throws unless exactly one). */
export function valueOf(families: Map<string, Family>, name: string, labels: Record<string, string> = {}): number {
  const family = familyOf(name, families);
  if (!family) throw new Error(`no metric family ${name}`);
  const matches = family.samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (matches.length !== 1) throw new Error(`${matches.length} samples of ${name} match ${JSON.stringify(labels)}`);
  return matches[0]!.value;
}
