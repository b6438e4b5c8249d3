/**
 * What the simulator's entries mean to a real AppliedState: every normal entry with data (a
 * proposal's text, such as `v7.12`) is a `secret.put` of that text, as its value, to one of a few
 * names chosen by the text, except a policy write (applied-policies.ts: its text starts with
 * POLICY_TEXT_PREFIX); empty entries (a new leader's) and membership changes put nothing.
 * The checker derives the same puts from the committed log (what applying it once gives), the
 * nodes apply them through AppliedState and read them back through its secrets API.
 */
import type { RecordKeys } from '../../src/crypto/record-seal.ts';
import { Keyring } from '../../src/crypto/keyring.ts';
import type { AppliedState } from '../../src/state/applied-state.ts';
import { encodeSecretCommand } from '../../src/state/secret-store.ts';
import { RefusalError } from '../../src/state/state-part.ts';
import { POLICY_TEXT_PREFIX } from './applied-policies.ts';

/** The commands' time (applying must not read a clock), and the time reads are made at. */
export const SECRET_NOW_MS = 1_700_000_000_000;
/** Versions every put keeps: runs put more than this to some names, so older versions are wiped. */
export const VERSIONS_KEPT = 20;
const NAMES = 5;

const decoder = new TextDecoder();

/** The secret a normal entry's data puts, or null (an empty entry, or a policy write). */
export function putOf(data: Uint8Array): { readonly name: string; readonly value: string } | null {
  if (data.byteLength === 0 || data[0] === POLICY_TEXT_PREFIX.charCodeAt(0)) return null;
  const value = decoder.decode(data);
  return { name: secretNameOf(value), value };
}

/** One of NAMES names, by a hash of the text (FNV-1a), so runs spread their puts over them. */
export function secretNameOf(text: string): string {
  let h = 0x811c9dc5;
  for (let k = 0; k < text.length; k++) h = Math.imul(h ^ text.charCodeAt(k), 0x01000193);
  return `app/k${(h >>> 0) % NAMES}`;
}

/** Every name a put may go to. */
export function secretNames(): string[] {
  return Array.from({ length: NAMES }, (_, k) => `app/k${k}`);
}

/** The command an entry carries, as the barrier hands it to AppliedState (a leader's own: no actor). */
export function encodePut(put: { readonly name: string; readonly value: string }): { kind: string; data: Uint8Array } {
  return encodeSecretCommand(
    {
      op: 'put',
      name: put.name,
      value: Buffer.from(put.value),
      cas: null,
      expireAtMs: null,
      versionsKept: VERSIONS_KEPT,
      nowMs: SECRET_NOW_MS,
    },
    null,
  );
}

/** The cluster's record keys: one term, a fixed key (the same seed seals the same bytes). */
export function simRecordKeys(): RecordKeys {
  const keyring = Keyring.empty('sim-cluster');
  keyring.addTerm(1, Buffer.alloc(32, 0x5a), 0);
  return keyring;
}

/** A version as read: its number and, when read, its value. */
export interface ReadVersion {
  readonly version: number;
  readonly value: string | null;
}

/**
 * A name's versions as the state holds them (none: it does not exist), read through the secrets
 * API; values too when `values` ('all', or 'last': the newest one only).
 */
export function readSecret(state: AppliedState, name: string, values: 'all' | 'last' | 'none'): ReadVersion[] {
  let versions: number[];
  try {
    versions = state.secrets.versions(name, SECRET_NOW_MS).map((v) => v.version);
  } catch (error) {
    if (error instanceof RefusalError && error.code === 'NOT_FOUND') return [];
    throw error;
  }
  return versions.map((version, k) => ({
    version,
    value:
      values === 'all' || (values === 'last' && k === versions.length - 1)
        ? state.secrets.read(name, { version }, SECRET_NOW_MS).value.toString()
        : null,
  }));
}
