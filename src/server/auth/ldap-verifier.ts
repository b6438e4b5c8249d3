import { isIP } from 'node:net';
import type { LdapMethodConfig } from '../../state/auth-config.ts';
import { refuse } from '../errors.ts';

/** An LDAP username Coffer binds with: plain characters only, so it needs no escaping in a DN. */
export const LDAP_USERNAME_PATTERN = /^[A-Za-z0-9._@-]{1,128}$/;
export const LDAP_PASSWORD_CHARS_MAX = 1024;
/** Connecting, StartTLS, the bind and the group search each give up after this long. */
export const LDAP_TIMEOUT_MS = 5000;
/** Groups read for one user, at most. */
export const LDAP_GROUPS_MAX = 1000;

/**
 * Checks a username and password by binding as that user to the method's LDAP server, over TLS
 * (ldaps://, or StartTLS before the bind), then reads the user's groups with the user's own bind.
 * Coffer holds no LDAP credentials of its own. Throws LDAP_CREDENTIALS_INVALID (the same refusal
 * for an unknown user and a wrong password) or LDAP_UNREACHABLE.
 */
export async function ldapLogin(
  config: LdapMethodConfig,
  username: string,
  password: string,
): Promise<{ dn: string; groups: string[] }> {
  if (!LDAP_USERNAME_PATTERN.test(username))
    throw refuse('INVALID_ARGUMENT', 'username: 1 to 128 of [A-Za-z0-9._@-]', { field: 'username' });
  // An empty password is an "unauthenticated bind" (RFC 4513 5.1.2), which servers answer with
  // success: it proves nothing.
  if (password.length === 0 || password.length > LDAP_PASSWORD_CHARS_MAX)
    throw refuse('INVALID_ARGUMENT', `password: 1 to ${LDAP_PASSWORD_CHARS_MAX} characters`, { field: 'password' });
  // StartTLS checks the server's certificate against the URL's host (ldapts would check
  // "localhost" without it); an IP address is matched against the certificate's IP names.
  const host = new URL(config.url).hostname.replace(/^\[|\]$/g, '');
  const tlsOptions = {
    host,
    ...(isIP(host) === 0 ? { servername: host } : {}),
    ...(config.caPem === '' ? {} : { ca: config.caPem }),
  };
  // ldapts is loaded at the first LDAP login: a manager that never uses LDAP starts without it.
  const { Client, InvalidCredentialsError, escapeFilter } = await import('ldapts');
  const client = new Client({
    url: config.url,
    timeout: LDAP_TIMEOUT_MS,
    connectTimeout: LDAP_TIMEOUT_MS,
    // Not strict: an Active Directory UPN ("alice@corp.example") is not a DN. The username is plain characters only.
    strictDN: false,
    ...(config.url.startsWith('ldaps://') ? { tlsOptions } : {}),
  });
  const dn = config.userDnTemplate.replaceAll('{{username}}', username);
  try {
    try {
      if (config.startTls) await client.startTLS(tlsOptions);
      await client.bind(dn, password);
    } catch (error) {
      if (error instanceof InvalidCredentialsError)
        throw refuse('LDAP_CREDENTIALS_INVALID', 'the LDAP server refused this username and password');
      throw refuse('LDAP_UNREACHABLE', `the LDAP server could not be used: ${describe(error)}; retry`);
    }
    if (config.groupBaseDn === '') return { dn, groups: [] };
    const filter = config.groupFilter
      .replaceAll('{{dn}}', escapeFilter`${dn}`)
      .replaceAll('{{username}}', escapeFilter`${username}`);
    try {
      const { searchEntries } = await client.search(config.groupBaseDn, {
        scope: 'sub',
        filter,
        attributes: [config.groupNameAttribute],
        sizeLimit: LDAP_GROUPS_MAX,
      });
      const groups = searchEntries.flatMap((entry) => {
        const value = entry[config.groupNameAttribute];
        const values = Array.isArray(value) ? value : value === undefined ? [] : [value];
        return values.map((v) => (Buffer.isBuffer(v) ? v.toString('utf8') : String(v)));
      });
      return { dn, groups };
    } catch (error) {
      throw refuse('LDAP_UNREACHABLE', `the LDAP group search failed: ${describe(error)}`);
    }
  } finally {
    await client.unbind().catch(() => undefined);
  }
}

/** An LDAP or connection error in a few words, never with the password (ldapts does not echo it). */
function describe(error: unknown): string {
  const e = error as { code?: unknown; message?: unknown };
  return `${typeof e.code === 'string' || typeof e.code === 'number' ? `${e.code} ` : ''}${String(e.message ?? error).slice(0, 200)}`;
}
