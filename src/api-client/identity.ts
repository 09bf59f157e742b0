// Who is asking: every runner API request (register, verify, repair, unregister) opens with
// the agent's protocol and agent versions (what the control plane checks first: 426), then
// says which runner it is and on which host (the host facts, fingerprint included, gathered
// once by state/host.ts). One builder, so the bodies cannot drift apart.
import type { HostFacts } from "../protocol/http.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../protocol/version.js";

/** What every identity body carries first. */
export interface AgentVersions {
  protocolVersion: number;
  agentVersion: string;
}

/**
 * The body of a runner API request: this agent's versions, then `fields` as given, e.g.
 * `{ runnerId, host }` for verify and repair, `{ runnerId }` for unregister, and the name,
 * labels, host and `replace` for register. The request's own type checks the fields.
 */
export function identityBody<F extends { runnerId?: string; host?: HostFacts }>(fields: F): AgentVersions & F {
  return { protocolVersion: PROTOCOL_VERSION, agentVersion: AGENT_VERSION, ...fields };
}
