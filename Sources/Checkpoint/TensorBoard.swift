import Common
import Foundation

/// runs/NAME/events.out.tfevents.*: the run's metrics for TensorBoard (`tensorboard --logdir runs/`), written by rank 0
/// beside metrics.h5, one scalar per metrics series and step. The format is TensorFlow's event file:
/// - TFRecord framing: each record is a little-endian UInt64 length, the masked CRC-32C of those 8 bytes, the data,
///   and the masked CRC-32C of the data;
/// - each record an `Event` protobuf: wall_time (field 1, double), step (2, int64), and either file_version (3,
///   string; the first record) or summary (5) holding `Summary.Value`s of tag (1, string) and simple_value (2, float).
/// Only these few fields are written, by hand. A resumed run appends to its file; a record cut short by a crash is
/// dropped first, so readers never stop at a torn tail.
public final class TensorBoardWriter {
    public let path: String
    private let handle: FileHandle

    /// The tag of a metrics series: `train/…`, `val/…`, `perf/…`, `comm/…`, `eval/…` (one definition for every
    /// writer and reader of these files).
    public static func tag(forSeries name: String) -> String {
        switch name {
        case "train_loss": return "train/loss"
        case "lr", "grad_norm": return "train/" + name
        case "tokens_per_s", "ms_per_step", "mfu", "opt_ms", "data_ms": return "perf/" + name
        case "comm_ms", "exposed_ms": return "comm/" + name
        default:
            if name.hasPrefix("val_") { return "val/" + name.dropFirst(4) }
            if name.hasPrefix("eval_") { return "eval/" + name.dropFirst(5) }
            return "other/" + name
        }
    }

    /// Opens the run directory's event file for appending (the newest `events.out.tfevents.*` there, trimmed to its
    /// last whole record), or creates one named as TensorFlow names them.
    public init(directory: String) throws {
        let fm = FileManager.default
        let existing = ((try? fm.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasPrefix("events.out.tfevents.") }.sorted()
        if let newest = existing.last {
            path = directory + "/" + newest
            guard let h = FileHandle(forUpdatingAtPath: path) else {
                throw GPT2DistError(.fileFormat, "cannot open \(path) for appending")
            }
            handle = h
            let data = h.readDataToEndOfFile()
            let whole = Self.wholeRecordsLength(data)
            if whole < data.count { try h.truncate(atOffset: UInt64(whole)) }
            try h.seek(toOffset: UInt64(whole))
        } else {
            let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
            path = directory + "/events.out.tfevents.\(Int(Date().timeIntervalSince1970)).\(host)"
            guard fm.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
                throw GPT2DistError(.fileFormat, "cannot create \(path)")
            }
            handle = h
            var event = Protobuf()
            event.double(1, Date().timeIntervalSince1970)
            event.string(3, "brain.Event:2")
            try write(record: event.bytes)
        }
    }

    deinit { try? handle.close() }

    /// One event at `step` holding a scalar per series of `values`, but the step counters ("step", "val_step", ...).
    public func append(_ values: [String: Double], step: Int) throws {
        var summary = Protobuf()
        for (name, value) in values.sorted(by: { $0.key < $1.key }) where name != "step" && !name.hasSuffix("_step") {
            var v = Protobuf()
            v.string(1, Self.tag(forSeries: name))
            v.float(2, Float(value))
            summary.message(1, v)
        }
        var event = Protobuf()
        event.double(1, Date().timeIntervalSince1970)
        event.int(2, step)
        event.message(5, summary)
        try write(record: event.bytes)
    }

    private func write(record: [UInt8]) throws {
        var out: [UInt8] = []
        var length = UInt64(record.count).littleEndian
        let lengthBytes = withUnsafeBytes(of: &length) { Array($0) }
        out += lengthBytes
        out += Self.le32(CRC32C.masked(lengthBytes))
        out += record
        out += Self.le32(CRC32C.masked(record))
        try handle.write(contentsOf: out)
    }

    private static func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    /// Bytes of `data` taken by whole, checksum-valid records from the start.
    static func wholeRecordsLength(_ data: Data) -> Int {
        let bytes = [UInt8](data)
        var at = 0
        while let (_, next) = record(in: bytes, at: at) { at = next }
        return at
    }

    /// The record starting at `at` and where the next one starts; nil at the end or at a torn or damaged record.
    public static func record(in bytes: [UInt8], at: Int) -> (data: ArraySlice<UInt8>, next: Int)? {
        guard at + 12 <= bytes.count else { return nil }
        let lengthBytes = Array(bytes[at..<(at + 8)])
        let length = lengthBytes.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        func crc(_ i: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[i + $1]) << (8 * UInt32($1)) } }
        guard crc(at + 8) == CRC32C.masked(lengthBytes), length <= UInt64(bytes.count - at - 16) else { return nil }
        let start = at + 12, end = start + Int(length)
        let data = bytes[start..<end]
        guard crc(end) == CRC32C.masked(data) else { return nil }
        return (data, end + 4)
    }
}

/// The few protobuf encodings an event needs: varint keys and integers, 64-bit doubles, 32-bit floats, and
/// length-delimited strings and messages.
struct Protobuf {
    private(set) var bytes: [UInt8] = []

    private mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }
    private mutating func key(_ field: Int, _ wireType: UInt64) { varint(UInt64(field) << 3 | wireType) }

    mutating func int(_ field: Int, _ v: Int) { key(field, 0); varint(UInt64(bitPattern: Int64(v))) }
    mutating func double(_ field: Int, _ v: Double) { key(field, 1); withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
    mutating func float(_ field: Int, _ v: Float) { key(field, 5); withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
    mutating func string(_ field: Int, _ s: String) { bytesField(field, Array(s.utf8)) }
    mutating func message(_ field: Int, _ m: Protobuf) { bytesField(field, m.bytes) }
    private mutating func bytesField(_ field: Int, _ b: [UInt8]) { key(field, 2); varint(UInt64(b.count)); bytes += b }
}

/// CRC-32C (Castagnoli), as TFRecord checksums its records, and TensorFlow's mask of it.
enum CRC32C {
    static let table: [UInt32] = (0..<256).map { i in
        (0..<8).reduce(UInt32(i)) { c, _ in c & 1 == 1 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
    }

    static func checksum<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        ~bytes.reduce(~UInt32(0)) { table[Int(($0 ^ UInt32($1)) & 0xFF)] ^ ($0 >> 8) }
    }

    static func masked<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        let c = checksum(bytes)
        return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
    }
}
