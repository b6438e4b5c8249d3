export type CryptoErrorCode =
  /** The ciphertext or its associated data was altered, or the key is not the one that sealed it. */
  | 'DECRYPT_FAILED'
  /** The data was sealed under a keyring term that was destroyed (key revocation). */
  | 'KEY_TERM_DESTROYED'
  /** The data names a keyring term this keyring never had. */
  | 'KEY_TERM_UNKNOWN'
  /** The keyring has no term yet (a new cluster before its first rotation is applied). */
  | 'KEYRING_EMPTY'
  /** The active key reached its use limit; rotate the keyring. */
  | 'KEY_USES_EXHAUSTED'
  /** An unlock key that is not of the CFRKEY-1 form, or whose checksum fails (a typo). */
  | 'UNLOCK_KEY_MALFORMED'
  /** A well-formed unlock key that does not open this root key. */
  | 'UNLOCK_KEY_WRONG'
  /** A recovery key that is not of the CFRREC-1 form, or whose checksum fails (a typo). */
  | 'RECOVERY_KEY_MALFORMED'
  /** A key (recovery or unlock) that does not open this backup. */
  | 'BACKUP_KEY_WRONG'
  /** A backup file that is not one, or was altered. */
  | 'BACKUP_INVALID'
  /** A key file that is missing, the wrong size or readable by others. */
  | 'KEY_FILE_INVALID'
  /** The data directory has no key store (not a manager's, or not initialized). */
  | 'KEY_STORE_MISSING'
  /** The key store is damaged (checksum or layout). */
  | 'KEY_STORE_CORRUPT'
  /** A certificate without the fields Coffer puts in its certificates. */
  | 'CERTIFICATE_INVALID'
  /** A join token that is not of the CFRTKN-1 form. */
  | 'JOIN_TOKEN_MALFORMED'
  /** Bytes that are not a sealed envelope at all. */
  | 'ENVELOPE_MALFORMED';

/** A refused cryptographic operation. Messages never contain key material or plaintext. */
export class CryptoError extends Error {
  override name = 'CryptoError';
  readonly code: CryptoErrorCode;

  constructor(code: CryptoErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}
