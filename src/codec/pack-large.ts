import type { Packr } from 'msgpackr';

/** What msgpackr's shared buffer goes back to after a large pack. */
const PACK_BUFFER_BYTES = 8192;

/**
 * Packs something large (a state image) and then hands msgpackr a small buffer again. msgpackr
 * packs every value, with every Packr, into one module-wide buffer that grows to the largest
 * value packed and is then replaced by buffers of that same size as it fills: after one 25 MB
 * image, each small pack that is kept (a log entry) could hold a 25 MB buffer alive. The image
 * returned stays valid (it is a view of the buffer msgpackr lets go of).
 */
export function packLarge(packr: Packr, value: unknown): Buffer {
  const packed = packr.pack(value);
  packr.useBuffer(Buffer.allocUnsafeSlow(PACK_BUFFER_BYTES));
  return packed;
}
