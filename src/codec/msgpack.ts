import { Packr } from 'msgpackr';

/**
 * The one msgpack setup of the project: plain maps and arrays, no records and no extension types,
 * so every manager, version and tool encodes and decodes the same bytes the same way. (msgpackr's
 * buffer is shared by all its instances, so one instance costs nothing more than several.)
 */
export const packr = new Packr({ useRecords: false, moreTypes: false });
