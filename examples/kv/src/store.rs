//! The key-value store's durable part: an append-only log of records on the block device, and
//! the in-memory index rebuilt from it at boot.
//!
//! Each record starts on a block boundary and is written with one BLOCK_WRITE (one exit, however
//! many blocks it spans); a write is acknowledged only after that call returns, that is once it
//! is in the host file. That survives the unikernel or tender being stopped or killed; it does not
//! survive a host crash before the host flushes its page cache, since the hvt ABI has no flush. A
//! full log answers `ERR storage full` (there is no compaction). A record:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `KVR1` |
//! | 4..12 | sequence number (1, 2, 3, ... with no gap) |
//! | 12 | operation: 1 = set, 2 = delete |
//! | 13..15 | key length (u16) |
//! | 15..19 | value length (u32) |
//! | 19..23 | CRC-32 of bytes 0..19 and of key and value |
//! | 23.. | key, value, zero padding to the block |
//!
//! Recovery reads records from block 0 while the magic, the sequence and the checksum hold. The
//! first record that fails ends the log: a write torn by a kill (part of its blocks on disk) fails
//! its checksum, is reported, never returned as data, and is overwritten by the next write.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use guest_rt::BlockDevice;
use guest_rt::device::Error as DeviceError;

const MAGIC: &[u8; 4] = b"KVR1";
const HEADER: usize = 23;
const OP_SET: u8 = 1;
const OP_DELETE: u8 = 2;
pub const MAX_KEY: usize = 250;
pub const MAX_VALUE: usize = 16 << 10;

#[derive(Debug)]
pub enum StoreError {
    Device(DeviceError),
    Full,
    TooLarge,
}

impl From<DeviceError> for StoreError {
    fn from(e: DeviceError) -> Self {
        StoreError::Device(e)
    }
}

pub struct Store {
    disk: BlockDevice,
    index: BTreeMap<String, String>,
    /// Byte offset where the next record goes.
    end: u64,
    next_seq: u64,
    /// Set when recovery stopped at a record that failed its checksum.
    pub torn_at: Option<u64>,
    pub recovered: u64,
}

fn checksum(header: &[u8], key: &[u8], value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..19]);
    h.update(key);
    h.update(value);
    h.finalize()
}

impl Store {
    /// Rebuilds the index from the log on `disk`.
    pub fn open(disk: BlockDevice) -> Result<Self, StoreError> {
        let mut store = Store { disk, index: BTreeMap::new(), end: 0, next_seq: 1, torn_at: None, recovered: 0 };
        let bs = disk.block_size();
        let mut block = vec![0u8; bs as usize];
        while store.end < disk.capacity() {
            disk.read(store.end, &mut block)?;
            if &block[..4] != MAGIC {
                break;
            }
            let seq = u64::from_le_bytes(block[4..12].try_into().unwrap_or_default());
            let op = block[12];
            let klen = usize::from(u16::from_le_bytes([block[13], block[14]]));
            let vlen = u32::from_le_bytes(block[15..19].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(block[19..23].try_into().unwrap_or_default());
            let total = HEADER + klen + vlen;
            let size = (total as u64).div_ceil(bs) * bs;
            let torn = seq != store.next_seq
                || klen > MAX_KEY
                || vlen > MAX_VALUE
                || store.end.checked_add(size).is_none_or(|e| e > disk.capacity());
            if torn {
                if seq == store.next_seq {
                    store.torn_at = Some(store.end);
                }
                break;
            }
            let mut record = vec![0u8; size as usize];
            disk.read(store.end, &mut record)?;
            let (key, value) = (&record[HEADER..HEADER + klen], &record[HEADER + klen..total]);
            if checksum(&record, key, value) != crc || (op != OP_SET && op != OP_DELETE) {
                store.torn_at = Some(store.end);
                break;
            }
            let key = String::from_utf8_lossy(key).into_owned();
            if op == OP_SET {
                store.index.insert(key, String::from_utf8_lossy(value).into_owned());
            } else {
                store.index.remove(&key);
            }
            store.end += size;
            store.next_seq += 1;
            store.recovered += 1;
        }
        Ok(store)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.index.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Stores `key = value` durably; returns once the record is on the device.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.append(OP_SET, key, value)?;
        self.index.insert(key.into(), value.into());
        Ok(())
    }

    /// Deletes `key` durably; false if it was not there (nothing is written then).
    pub fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        if !self.index.contains_key(key) {
            return Ok(false);
        }
        self.append(OP_DELETE, key, "")?;
        self.index.remove(key);
        Ok(true)
    }

    fn append(&mut self, op: u8, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.as_bytes(), value.as_bytes());
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(StoreError::TooLarge);
        }
        let bs = self.disk.block_size();
        let total = HEADER + key.len() + value.len();
        let size = (total as u64).div_ceil(bs) * bs;
        if self.end + size > self.disk.capacity() {
            return Err(StoreError::Full);
        }
        let mut record: Vec<u8> = vec![0u8; size as usize];
        record[..4].copy_from_slice(MAGIC);
        record[4..12].copy_from_slice(&self.next_seq.to_le_bytes());
        record[12] = op;
        record[13..15].copy_from_slice(&(key.len() as u16).to_le_bytes());
        record[15..19].copy_from_slice(&(value.len() as u32).to_le_bytes());
        record[HEADER..HEADER + key.len()].copy_from_slice(key);
        record[HEADER + key.len()..total].copy_from_slice(value);
        let crc = checksum(&record, key, value);
        record[19..23].copy_from_slice(&crc.to_le_bytes());
        self.disk.write(self.end, &record)?;
        self.end += size;
        self.next_seq += 1;
        Ok(())
    }
}
