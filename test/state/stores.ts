import { Keyring } from '../../src/crypto/keyring.ts';
import type { RecordKeys } from '../../src/crypto/record-seal.ts';
import { MemoryStateStore } from '../../src/kv/memory-state-store.ts';
import { WriteSet } from '../../src/kv/write-set.ts';
import { SecretStore, encodeSecretCommand, type IdentityQuotas } from '../../src/state/secret-store.ts';

/** A keyring with one term, for sealing records in tests (what the barrier attaches on a manager). */
export function testRecordKeys(clusterId = 'test-cluster'): RecordKeys {
  return Keyring.create(clusterId, 0);
}

/** A secrets part on an in-memory state store, as AppliedState makes one. */
export function newSecretStore(quotas: IdentityQuotas = {}, keys: RecordKeys = testRecordKeys()): SecretStore {
  return new SecretStore({ ...quotas, records: new WriteSet(new MemoryStateStore()), keys });
}

/** `count` committed `secret.put` commands at indexes 1..count, as a replica hands them to AppliedState. */
export function secretPutEntries(
  count: number,
  name: (k: number) => string,
  value: (k: number) => string,
): Array<{ index: number; kind: string; data: Buffer }> {
  return Array.from({ length: count }, (_, k) => ({
    index: k + 1,
    ...encodeSecretCommand({
      op: 'put',
      name: name(k),
      value: Buffer.from(value(k)),
      cas: null,
      expireAtMs: null,
      versionsKept: 50,
      nowMs: 1_700_000_000_000,
    }),
  }));
}
