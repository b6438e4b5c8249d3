import { generateUnlockKey } from '../../src/crypto/unlock-key.ts';
import type { KeyOperation, Manager } from '../../src/manager/manager.ts';
import { type LeaderLink, Proposer } from '../../src/manager/proposer.ts';
import type { Logger } from '../../src/util/logger.ts';

/**
 * What an operator does to managers in these tests, through the write path the server uses
 * (Proposer: seal here, propose here or forward to the leader). Without a link to the leader, the
 * manager must lead.
 */
export function operator<Result>(manager: Manager<Result>, leader: LeaderLink<Result> | null = null, logger?: Logger) {
  const proposer = new Proposer<Result>({ manager, leader, ...(logger === undefined ? {} : { logger }) });
  return {
    proposer,
    propose: (kind: string, data: Uint8Array): Promise<Result> => proposer.command(kind, data),
    /** A keyring operation; what it did, as the barrier describes it. */
    key: async (operation: KeyOperation): Promise<string> => (await proposer.keyOperation(operation)).detail,
    /** A new unlock key (a fresh one unless given); returns it. */
    rotateUnlock: async (unlockKey: string = generateUnlockKey()): Promise<string> => {
      await proposer.keyOperation({ op: 'rotate-unlock', unlockKey });
      return unlockKey;
    },
  };
}
