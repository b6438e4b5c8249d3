import { isIP } from 'node:net';
import { hostOf } from './node-config.ts';

/**
 * The names a manager's certificate carries (its subjectAltName), for clients that check a
 * server's host name: every client made with standard gRPC or TLS libraries (Python, Go, Java,
 * curl). Coffer's own clients identify a manager by its certificate's fields and key, not by a
 * name, so for them the names change nothing.
 *
 * A certificate names the advertise host, `localhost` and `127.0.0.1` (so that a client on the
 * same host can dial `localhost:PORT`), and the names given with `--san` (extra hosts). The same names are used at init, at join (by the leader that signs)
 * and at every renewal, so a renewed certificate names what the first one named.
 */

/** Extra names a manager may ask for (its advertise host, `localhost` and `127.0.0.1` come on top). */
export const MANAGER_EXTRA_HOSTS_MAX = 16;
/** The longest DNS name (RFC 1035, section 2.3.4: 255 octets on the wire, 253 characters written). */
const DNS_NAME_CHARS_MAX = 253;
const DNS_LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

/**
 * Why `name` cannot be a name in a manager's certificate, or null. A name is an IPv4 or IPv6
 * address (no zone, no brackets) or a DNS name: labels of letters, digits, `-` and `_` (compose
 * service names may hold one), neither starting nor ending with `-`, at most 63 characters each
 * and 253 in all. No wildcard: `*.example.com` would vouch for names nobody listed.
 */
export function hostNameProblem(name: string): string | null {
  const shown = JSON.stringify(name.slice(0, DNS_NAME_CHARS_MAX + 1));
  if (isIP(name) !== 0) return name.includes('%') ? `${shown} is an IP address with a zone: give it without` : null;
  if (name.length === 0) return 'a certificate name is empty';
  if (name.length > DNS_NAME_CHARS_MAX) return `${shown} is longer than a DNS name may be (${DNS_NAME_CHARS_MAX})`;
  if (name.includes('*')) return `${shown} is a wildcard: name each host instead`;
  if (/^[0-9.]+$/.test(name) || name.includes(':')) return `${shown} is neither an IP address nor a DNS name`;
  if (!name.split('.').every((label) => DNS_LABEL.test(label.toLowerCase())))
    return `${shown} is not a DNS name (labels of letters, digits, - and _, up to 63 characters, dot-separated) or an IP address`;
  return null;
}

/**
 * Checks the extra names a manager asks for (at most MANAGER_EXTRA_HOSTS_MAX) and returns them
 * as certificates hold them: DNS names in lower case, each once. Throws a TypeError saying which
 * name is wrong and why; the callers (CLI, init, join, the leader's Join service) give it their
 * own error type.
 */
export function normalizeExtraHosts(names: readonly string[]): string[] {
  if (names.length > MANAGER_EXTRA_HOSTS_MAX)
    throw new TypeError(
      `${names.length} extra certificate names (--san): a manager may have at most ${MANAGER_EXTRA_HOSTS_MAX}`,
    );
  const out: string[] = [];
  for (const name of names) {
    const problem = hostNameProblem(name);
    if (problem !== null) throw new TypeError(`certificate name (--san): ${problem}`);
    const normal = isIP(name) === 0 ? name.toLowerCase() : name;
    if (!out.includes(normal)) out.push(normal);
  }
  return out;
}

/** Names every manager's certificate carries: a client on the manager's own host dials one of them. */
export const LOOPBACK_HOSTS: readonly string[] = ['localhost', '127.0.0.1'];

/**
 * Every name of a manager's certificate: the host of its advertise address first (what other
 * managers dial), then `localhost` and `127.0.0.1` whatever it advertises (a client on the same
 * host dials those; only a process on the client's own host answers there, so naming them vouches
 * for nothing remote), then the extra names (already checked by normalizeExtraHosts), each once.
 */
export function managerCertificateHosts(advertise: string, extraHosts: readonly string[]): string[] {
  const names = [hostOf(advertise), ...LOOPBACK_HOSTS, ...extraHosts];
  return names.filter((name, k) => names.indexOf(name) === k);
}
