// Reads a registration token from --token, --token-file FILE or --token-file - (stdin). Tokens in argv
// are visible to every user of the machine (ps), so --token earns a warning.
import { promises as fs } from "node:fs";
import { RunnerError } from "../errors.js";

export interface TokenOptions {
  token?: string;
  tokenFile?: string;
}

export async function readToken(options: TokenOptions): Promise<string | undefined> {
  // Both given: which one the person meant is a guess, and a wrong guess spends a one-time token.
  if (options.token !== undefined && options.tokenFile !== undefined)
    throw new RunnerError("usage", "--token and --token-file exclude each other: give the token one way");
  if (options.token !== undefined) {
    process.stderr.write(
      "runner: warning: --token is visible to other users in the process list; prefer --token-file or stdin\n",
    );
    return nonEmpty(options.token, "--token");
  }
  if (options.tokenFile === "-") {
    const text = await readTokenFromStdin();
    if (text === undefined) throw new RunnerError("usage", "--token-file -: standard input held no token");
    return nonEmpty(text, "standard input");
  }
  if (options.tokenFile !== undefined) {
    let text: string;
    try {
      text = await fs.readFile(options.tokenFile, "utf8");
    } catch (error) {
      throw new RunnerError(
        "usage",
        `cannot read the token file ${options.tokenFile}: ${(error as NodeJS.ErrnoException).code ?? "error"}`,
      );
    }
    return nonEmpty(text, options.tokenFile);
  }
  return undefined;
}

export async function readTokenFromStdin(
  stdin: NodeJS.ReadableStream & { isTTY?: boolean } = process.stdin,
): Promise<string | undefined> {
  if (stdin.isTTY) process.stderr.write("registration token: ");
  const chunks: Buffer[] = [];
  for await (const chunk of stdin) {
    chunks.push(Buffer.from(chunk as Buffer));
    if (stdin.isTTY && Buffer.concat(chunks).includes(10)) break;
  }
  const text = Buffer.concat(chunks).toString("utf8").trim();
  return text === "" ? undefined : text;
}

function nonEmpty(text: string, where: string): string {
  const token = text.trim();
  if (token === "") throw new RunnerError("usage", `${where} holds no token`);
  if (/\s/.test(token))
    throw new RunnerError("usage", `${where} must hold exactly one token (found whitespace inside it)`);
  return token;
}
