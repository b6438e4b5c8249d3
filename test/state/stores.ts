import { Keyring } from '../../src/crypto/keyring.ts';
import type { RecordKeys } from '../../src/crypto/record-seal.ts';
import { MemoryStateStore } from '../../src/kv/memory-state-store.ts';
import { WriteSet } from '../../src/kv/write-set.ts';
import { SecretStore, type IdentityQuotas } from '../../src/state/secret-store.ts';

/** A keyring with one term, for sealing records in tests (what the barrier attaches on a manager). */
export function testRecordKeys(clusterId = 'test-cluster'): RecordKeys {
  return Keyring.create(clusterId, 0);
}

/** A secrets part on an in-memory state store, as AppliedState makes one. */
export function newSecretStore(quotas: IdentityQuotas = {}, keys: RecordKeys = testRecordKeys()): SecretStore {
  return new SecretStore({ ...quotas, records: new WriteSet(new MemoryStateStore()), keys });
}
