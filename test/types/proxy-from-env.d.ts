// proxy-from-env 2.1.0 ships no types; the one function the tests call (test/unit/proxy.test.ts
// compares the runner's NO_PROXY matcher with it).
declare module "proxy-from-env" {
  /** The proxy URL for `url` from the *_PROXY and NO_PROXY variables of process.env, or "" for none. */
  export function getProxyForUrl(url: string | URL): string;
}
