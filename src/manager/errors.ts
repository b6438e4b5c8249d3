export type ManagerErrorCode =
  /** The manager is locked (autolock): unlock it with the unlock key first. */
  | 'MANAGER_LOCKED'
  | 'ALREADY_UNLOCKED'
  | 'ALREADY_INITIALIZED'
  /** A keyring operation the replicated state refused (e.g. destroying a term before a rewrap). */
  | 'KEY_OP_REFUSED'
  /** A command that reached the log but could not be opened (e.g. sealed under a destroyed term). */
  | 'COMMAND_REFUSED'
  | 'MANAGER_STOPPED';

export class ManagerError extends Error {
  override name = 'ManagerError';
  readonly code: ManagerErrorCode;

  constructor(code: ManagerErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}
