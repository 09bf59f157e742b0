// Registering with a control plane: exchange a registration token for a runner id and a
// credential, keep the credential in the chosen store, then record the registration. Used by
// `runner register` and by the repair that re-registers a revoked or deleted runner.
import { register } from "../api-client/runner-api.js";
import type { StateFiles } from "../config/paths.js";
import type { CredentialStore } from "../credentials/store.js";
import type { HostFacts, RunnerView } from "../protocol/http.js";
import { identityBody } from "../api-client/identity.js";
import { writeRegistration, type Registration } from "../state/registration.js";
import type { ProxyConfig } from "../net/proxy.js";

export interface EnrollOptions {
  url: string;
  registrationToken: string;
  name: string;
  labels: string[];
  replace: boolean;
  store: CredentialStore;
  files: StateFiles;
  host: HostFacts;
  timeoutMs: number;
  proxy: ProxyConfig;
  insecurePlaintext: boolean;
  now: Date;
}

export async function enroll(options: EnrollOptions): Promise<Registration> {
  const answer = await register(
    {
      url: options.url,
      timeoutMs: options.timeoutMs,
      proxy: options.proxy,
      insecurePlaintext: options.insecurePlaintext,
    },
    options.registrationToken,
    identityBody({ name: options.name, labels: options.labels, host: options.host, replace: options.replace }),
  );
  // Credential first: a registration file that names a credential never written would look
  // like "credential missing" at the next start.
  await options.store.write({ v: 1, runnerId: answer.runnerId, url: options.url, credential: answer.credential });
  const registration: Registration = {
    version: 1,
    runnerId: answer.runnerId,
    url: options.url,
    name: answer.name,
    labels: answer.labels,
    credentialStore: options.store.kind,
    hostFingerprint: options.host.fingerprint,
    registeredAt: options.now.toISOString(),
  };
  await writeRegistration(options.files.registration, registration);
  return registration;
}

/** The registration as the control plane describes the runner, for rebuilds and re-binds. */
export function registrationFrom(view: RunnerView, url: string, store: CredentialStore["kind"]): Registration {
  return {
    version: 1,
    runnerId: view.runnerId,
    url,
    name: view.name,
    labels: view.labels,
    credentialStore: store,
    hostFingerprint: view.host.fingerprint,
    registeredAt: view.registeredAt,
  };
}
