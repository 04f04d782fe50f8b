import Common
import Foundation

/// Reader and writer for the safetensors format: an 8-byte little-endian header length, a JSON header
/// {name: {dtype, shape, data_offsets: [begin, end]}}, then raw little-endian tensor bytes.
public struct SafeTensorsFile {
    public struct Entry: Equatable {
        public let dtype: String
        public let shape: [Int]
        public let begin: Int, end: Int
    }

    public let path: String
    public let entries: [String: Entry]
    public let metadata: [String: String]
    let data: Data
    let dataStart: Int

    static let byteSizes = ["F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                            "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1]

    public init(path: String) throws {
        self.path = path
        guard let d = try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) else {
            throw GPT2DistError(.fileFormat, "cannot read \(path)")
        }
        data = d
        guard d.count >= 8 else { throw GPT2DistError(.fileFormat, "\(path): too short for a safetensors file") }
        let headerLength = d.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard headerLength <= UInt64(d.count - 8), headerLength <= 100_000_000 else {
            throw GPT2DistError(.fileFormat, "\(path): malformed safetensors header length \(headerLength) (file has \(d.count) bytes)")
        }
        dataStart = 8 + Int(headerLength)
        let header: JSONValue
        do { header = try JSONValue.parse(d.subdata(in: 8..<dataStart)) } catch {
            throw GPT2DistError(.fileFormat, "\(path): malformed safetensors header (not JSON)")
        }
        guard let obj = header.object else { throw GPT2DistError(.fileFormat, "\(path): safetensors header is not a JSON object") }
        let available = d.count - dataStart
        var entries: [String: Entry] = [:], meta: [String: String] = [:]
        for (name, value) in obj {
            if name == "__metadata__" {
                for (k, v) in value.object ?? [:] { meta[k] = v.string ?? v.description }
                continue
            }
            guard let o = value.object, let dtype = o["dtype"]?.string, let size = Self.byteSizes[dtype],
                  let shapeArr = o["shape"]?.array, let offs = o["data_offsets"]?.array, offs.count == 2,
                  let begin = offs[0].int, let end = offs[1].int else {
                throw GPT2DistError(.fileFormat, "\(path): malformed safetensors entry \(name)")
            }
            let shape = try shapeArr.map { v -> Int in
                guard let i = v.int, i >= 0 else { throw GPT2DistError(.fileFormat, "\(path): bad shape for \(name)") }
                return i
            }
            guard begin >= 0, end >= begin, end <= available, end - begin == shape.reduce(1, *) * size else {
                throw GPT2DistError(.fileFormat, "\(path): tensor \(name) has data offsets [\(begin), \(end)) that do not fit its shape \(shape) and dtype \(dtype) or the file (truncated?)")
            }
            entries[name] = Entry(dtype: dtype, shape: shape, begin: begin, end: end)
        }
        self.entries = entries
        metadata = meta
    }

    /// Copies tensor `name` as float32 into `out`, converting from F16/BF16/F64; its shape must equal `shape`.
    public func readFloats(_ name: String, shape: [Int], into out: UnsafeMutablePointer<Float>) throws {
        guard let e = entries[name] else { throw GPT2DistError(.fileFormat, "\(path): missing tensor \(name)") }
        guard e.shape == shape else {
            throw GPT2DistError(.fileFormat, "\(path): tensor \(name) has shape \(e.shape), expected \(shape)")
        }
        let n = shape.reduce(1, *)
        data.withUnsafeBytes { raw in
            let src = raw.baseAddress! + dataStart + e.begin
            switch e.dtype {
            case "F32":
                memcpy(out, src, n * 4)
            case "F64":
                for i in 0..<n { out[i] = Float(src.loadUnaligned(fromByteOffset: i * 8, as: Double.self)) }
            case "F16":
                for i in 0..<n { out[i] = Float(Float16(bitPattern: src.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))) }
            case "BF16":
                for i in 0..<n {
                    out[i] = Float(bitPattern: UInt32(src.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)) << 16)
                }
            default:
                break
            }
        }
        guard ["F32", "F64", "F16", "BF16"].contains(e.dtype) else {
            throw GPT2DistError(.fileFormat, "\(path): tensor \(name) has dtype \(e.dtype), expected a float type (F32, F16, BF16, F64)")
        }
    }

    public func floats(_ name: String) throws -> [Float] {
        guard let e = entries[name] else { throw GPT2DistError(.fileFormat, "\(path): missing tensor \(name)") }
        var out = [Float](repeating: 0, count: e.shape.reduce(1, *))
        try out.withUnsafeMutableBufferPointer { try readFloats(name, shape: e.shape, into: $0.baseAddress!) }
        return out
    }

    public func ints(_ name: String) throws -> [Int] {
        guard let e = entries[name] else { throw GPT2DistError(.fileFormat, "\(path): missing tensor \(name)") }
        let n = e.shape.reduce(1, *)
        return try data.withUnsafeBytes { raw in
            let src = raw.baseAddress! + dataStart + e.begin
            switch e.dtype {
            case "I64": return (0..<n).map { Int(src.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
            case "I32": return (0..<n).map { Int(src.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
            default: throw GPT2DistError(.fileFormat, "\(path): tensor \(name) has dtype \(e.dtype), expected an integer type")
            }
        }
    }

    /// Writes float32 tensors (name, shape, pointer) in the given order, header keys sorted by the writer.
    public static func write(path: String, tensors: [(name: String, shape: [Int], data: UnsafePointer<Float>)],
                             metadata: [String: String] = [:]) throws {
        var header = "{"
        var parts: [String] = []
        if !metadata.isEmpty {
            let m = metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }.joined(separator: ",")
            parts.append("\"__metadata__\":{\(m)}")
        }
        var offset = 0
        for t in tensors {
            let bytes = t.shape.reduce(1, *) * 4
            parts.append("\(jsonString(t.name)):{\"dtype\":\"F32\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + bytes)]}")
            offset += bytes
        }
        header += parts.joined(separator: ",") + "}"
        var headerBytes = Array(header.utf8)
        while (8 + headerBytes.count) % 8 != 0 { headerBytes.append(0x20) }  // pad so tensor data is 8-byte aligned
        guard let out = OutputStream(toFileAtPath: path, append: false) else { throw GPT2DistError(.fileFormat, "cannot write \(path)") }
        out.open()
        defer { out.close() }
        func put(_ p: UnsafeRawPointer, _ n: Int) throws {
            var done = 0
            while done < n {
                let w = out.write(p.assumingMemoryBound(to: UInt8.self) + done, maxLength: min(n - done, 1 << 26))
                guard w > 0 else { throw GPT2DistError(.fileFormat, "cannot write \(path) (disk full?)") }
                done += w
            }
        }
        var len = UInt64(headerBytes.count).littleEndian
        try put(&len, 8)
        try put(headerBytes, headerBytes.count)
        for t in tensors { try put(t.data, t.shape.reduce(1, *) * 4) }
    }

    static func jsonString(_ s: String) -> String { JSONValue.string(s).json }
}
