import CHDF5
import Common
import Foundation

/// A small, typed wrapper over the serial HDF5 C API: groups, float32/float64/int64 datasets,
/// extendable 1-D series, and scalar attributes (strings are variable-length UTF-8, as h5py prefers).
public final class HDF5File {
    public let path: String
    let id: hid_t
    private var closed = false

    /// We report errors ourselves. The setting is per thread in a thread-safe HDF5 build, so it is applied on
    /// every open or create rather than once.
    static var silenced: Void {
        _ = noExitCleanup
        _ = H5Eset_auto2(gd_h5e_default(), nil, nil)
    }

    /// HDF5's own cleanup at exit walks every file it still knows; after a close that failed (a full disk) that
    /// includes a half-closed one, and it crashes there. We close every file ourselves, so switch that cleanup
    /// off (it must be the first HDF5 call of the process).
    static let noExitCleanup: Void = { _ = H5dont_atexit() }()

    private init(path: String, id: hid_t) { self.path = path; self.id = id }

    /// Debian's serial libhdf5 is not thread-safe: every call into it, from any thread (the trainer's writer beside
    /// its main thread, tests that run in parallel), holds this lock. Recursive: a method may call another.
    static let lock = NSRecursiveLock()

    public static func create(_ path: String, overwrite: Bool = true) throws -> HDF5File {
        lock.lock(); defer { lock.unlock() }
        _ = silenced
        let f = H5Fcreate(path, overwrite ? gd_h5f_acc_trunc() : gd_h5f_acc_excl(), gd_h5p_default(), gd_h5p_default())
        guard f >= 0 else { throw GPT2DistError(.fileFormat, "cannot create HDF5 file \(path)") }
        return HDF5File(path: path, id: f)
    }

    /// `locking: false` opens without HDF5's file lock, so a reader (plot, a test, a monitor) never blocks the
    /// trainer from appending to the file it is reading.
    public static func open(_ path: String, writable: Bool = false, locking: Bool = true) throws -> HDF5File {
        lock.lock(); defer { lock.unlock() }
        _ = silenced
        guard FileManager.default.isReadableFile(atPath: path) else { throw GPT2DistError(.fileFormat, "cannot read \(path)") }
        guard H5Fis_hdf5(path) > 0 else { throw GPT2DistError(.fileFormat, "\(path) is not an HDF5 file (corrupt or truncated?)") }
        let fapl = H5Pcreate(gd_h5p_file_access())
        defer { H5Pclose(fapl) }
        if !locking { H5Pset_file_locking(fapl, false, true) }
        let f = H5Fopen(path, writable ? gd_h5f_acc_rdwr() : gd_h5f_acc_rdonly(), fapl)
        guard f >= 0 else { throw GPT2DistError(.fileFormat, "cannot open HDF5 file \(path) (corrupt or truncated?)") }
        return HDF5File(path: path, id: f)
    }

    /// Closes without reporting failure (readers, and cleanup after an error already reported).
    public func close() { try? closeChecked() }

    /// Closes and reports whether HDF5 could write everything it still held (a writer's last chance to see a
    /// full disk). The file is closed either way: HDF5 releases the id even when the final flush fails.
    public func closeChecked() throws {
        Self.lock.lock(); defer { Self.lock.unlock() }
        guard !closed else { return }
        closed = true
        guard H5Fclose(id) >= 0 else { throw GPT2DistError(.fileFormat, "cannot finish writing \(path) (disk full?)") }
    }

    deinit { close() }

    // MARK: groups and existence

    public func exists(_ name: String) -> Bool {
        Self.lock.lock(); defer { Self.lock.unlock() }
        // Check each prefix: H5Lexists fails on a path whose parent is missing.
        var prefix = ""
        for part in name.split(separator: "/") {
            prefix += "/" + part
            if H5Lexists(id, prefix, gd_h5p_default()) <= 0 { return false }
        }
        return true
    }

    /// The names of the root group's members, in name order.
    public func rootNames() throws -> [String] {
        Self.lock.lock(); defer { Self.lock.unlock() }
        var info = H5G_info_t()
        guard H5Gget_info(id, &info) >= 0 else { throw GPT2DistError(.fileFormat, "\(path): cannot list its members") }
        return try (0..<info.nlinks).map { i in
            let size = H5Lget_name_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, i, nil, 0, gd_h5p_default())
            guard size >= 0 else { throw GPT2DistError(.fileFormat, "\(path): cannot read member \(i)'s name") }
            var name = [CChar](repeating: 0, count: Int(size) + 1)
            _ = H5Lget_name_by_idx(id, ".", H5_INDEX_NAME, H5_ITER_INC, i, &name, Int(size) + 1, gd_h5p_default())
            return String(cString: name)
        }
    }

    public func createGroup(_ name: String) throws {
        Self.lock.lock(); defer { Self.lock.unlock() }
        if exists(name) { return }
        let g = H5Gcreate2(id, name, gd_h5p_default(), gd_h5p_default(), gd_h5p_default())
        guard g >= 0 else { throw GPT2DistError(.fileFormat, "\(path): cannot create group \(name)") }
        H5Gclose(g)
    }

    // MARK: datasets

    /// Writes a float32 tensor with HDF5's Fletcher-32 checksum on its chunks, so a damaged file fails to read
    /// instead of loading wrong numbers (h5py verifies it too). Chunks are the whole tensor, or slices of whole
    /// rows of about 4 MiB: HDF5 copies a chunk to checksum it, so small chunks keep the checkpoint from raising peak memory.
    public func writeFloats(_ name: String, shape: [Int], _ data: UnsafePointer<Float>) throws {
        Self.lock.lock(); defer { Self.lock.unlock() }
        guard shape.allSatisfy({ $0 > 0 }) else { throw GPT2DistError(.fileFormat, "\(path): dataset \(name) has an empty shape \(shape)") }
        let rowFloats = shape.dropFirst().reduce(1, *)
        var chunk = shape.map { hsize_t($0) }
        chunk[0] = hsize_t(min(shape[0], max(1, (4 << 20) / 4 / rowFloats)))
        let dcpl = H5Pcreate(gd_h5p_dataset_create())
        defer { H5Pclose(dcpl) }
        guard H5Pset_chunk(dcpl, Int32(chunk.count), &chunk) >= 0, H5Pset_fletcher32(dcpl) >= 0 else {
            throw GPT2DistError(.fileFormat, "\(path): cannot set up the checksum of dataset \(name)")
        }
        try write(name, shape: shape, type: gd_h5t_native_float(), creation: dcpl, data)
    }

    private func write(_ name: String, shape: [Int], type: hid_t, creation: hid_t, _ data: UnsafeRawPointer) throws {
        var dims = shape.map { hsize_t($0) }
        let space = H5Screate_simple(Int32(dims.count), &dims, nil)
        defer { H5Sclose(space) }
        let d = H5Dcreate2(id, name, type, space, gd_h5p_default(), creation, gd_h5p_default())
        guard d >= 0 else { throw GPT2DistError(.fileFormat, "\(path): cannot create dataset \(name)") }
        defer { H5Dclose(d) }
        guard H5Dwrite(d, type, gd_h5s_all(), gd_h5s_all(), gd_h5p_default(), data) >= 0 else {
            throw GPT2DistError(.fileFormat, "\(path): cannot write dataset \(name) (disk full?)")
        }
    }

    /// Shape of a dataset and whether it stores 4-byte floats.
    public func datasetShape(_ name: String) throws -> (shape: [Int], isFloat32: Bool) {
        Self.lock.lock(); defer { Self.lock.unlock() }
        guard exists(name) else { throw GPT2DistError(.fileFormat, "\(path): missing dataset \(name)") }
        let d = H5Dopen2(id, name, gd_h5p_default())
        guard d >= 0 else { throw GPT2DistError(.fileFormat, "\(path): cannot open dataset \(name)") }
        defer { H5Dclose(d) }
        let space = H5Dget_space(d)
        defer { H5Sclose(space) }
        let rank = Int(H5Sget_simple_extent_ndims(space))
        var dims = [hsize_t](repeating: 0, count: max(rank, 1))
        H5Sget_simple_extent_dims(space, &dims, nil)
        let t = H5Dget_type(d)
        defer { H5Tclose(t) }
        let isF32 = H5Tget_class(t) == H5T_FLOAT && H5Tget_size(t) == 4
        return (Array(dims.prefix(rank)).map { Int($0) }, isF32)
    }

    /// Reads a float32 dataset of exactly `shape` into `out`.
    public func readFloats(_ name: String, shape: [Int], into out: UnsafeMutablePointer<Float>) throws {
        Self.lock.lock(); defer { Self.lock.unlock() }
        let (s, isF32) = try datasetShape(name)
        guard isF32 else { throw GPT2DistError(.fileFormat, "\(path): dataset \(name) is not float32") }
        guard s == shape else { throw GPT2DistError(.fileFormat, "\(path): dataset \(name) has shape \(s), expected \(shape)") }
        let d = H5Dopen2(id, name, gd_h5p_default())
        defer { H5Dclose(d) }
        guard H5Dread(d, gd_h5t_native_float(), gd_h5s_all(), gd_h5s_all(), gd_h5p_default(), out) >= 0 else {
            throw GPT2DistError(.fileFormat, "\(path): cannot read dataset \(name) (checksum mismatch or truncated: a damaged file)")
        }
    }

    public func readDoubles(_ name: String) throws -> [Double] {
        Self.lock.lock(); defer { Self.lock.unlock() }
        let (s, _) = try datasetShape(name)
        let n = s.reduce(1, *)
        var out = [Double](repeating: 0, count: n)
        let d = H5Dopen2(id, name, gd_h5p_default())
        defer { H5Dclose(d) }
        if n > 0 {
            guard H5Dread(d, gd_h5t_native_double(), gd_h5s_all(), gd_h5s_all(), gd_h5p_default(), &out) >= 0 else {
                throw GPT2DistError(.fileFormat, "\(path): cannot read dataset \(name)")
            }
        }
        return out
    }

    // MARK: extendable 1-D series (metrics)

    public func createSeries(_ name: String) throws {
        Self.lock.lock(); defer { Self.lock.unlock() }
        if exists(name) { return }
        var dims: [hsize_t] = [0], maxDims: [hsize_t] = [gd_h5s_unlimited()], chunk: [hsize_t] = [256]
        let space = H5Screate_simple(1, &dims, &maxDims)
        defer { H5Sclose(space) }
        let dcpl = H5Pcreate(gd_h5p_dataset_create())
        defer { H5Pclose(dcpl) }
        H5Pset_chunk(dcpl, 1, &chunk)
        let d = H5Dcreate2(id, name, gd_h5t_native_double(), space, gd_h5p_default(), dcpl, gd_h5p_default())
        guard d >= 0 else { throw GPT2DistError(.fileFormat, "\(path): cannot create series \(name)") }
        H5Dclose(d)
    }

    /// Number of values in a 1-D series.
    public func length(_ name: String) throws -> Int {
        Self.lock.lock(); defer { Self.lock.unlock() }
        return try datasetShape(name).shape.first ?? 0
    }

    /// Sets value `index` of a series and makes it the last one (the extent becomes index + 1). Writing a row at
    /// the same index in every series keeps them aligned even after a partly failed earlier write.
    public func setLast(_ name: String, at index: Int, _ value: Double) throws {
        Self.lock.lock(); defer { Self.lock.unlock() }
        let d = H5Dopen2(id, name, gd_h5p_default())
        guard d >= 0 else { throw GPT2DistError(.fileFormat, "\(path): no series \(name)") }
        defer { H5Dclose(d) }
        var newSize: [hsize_t] = [hsize_t(index + 1)]
        guard H5Dset_extent(d, &newSize) >= 0 else { throw GPT2DistError(.fileFormat, "\(path): cannot extend \(name)") }
        let fs = H5Dget_space(d)
        defer { H5Sclose(fs) }
        var start: [hsize_t] = [hsize_t(index)], count: [hsize_t] = [1], one: [hsize_t] = [1]
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, nil, &count, nil)
        let ms = H5Screate_simple(1, &one, nil)
        defer { H5Sclose(ms) }
        var v = value
        guard H5Dwrite(d, gd_h5t_native_double(), ms, fs, gd_h5p_default(), &v) >= 0 else {
            throw GPT2DistError(.fileFormat, "\(path): cannot append to \(name)")
        }
    }

    // MARK: attributes (on the root "/" or any group)

    public func setAttribute(_ object: String, _ name: String, string value: String) throws {
        Self.lock.lock(); defer { Self.lock.unlock() }
        let t = H5Tcopy(gd_h5t_c_s1())
        defer { H5Tclose(t) }
        H5Tset_size(t, gd_h5t_variable())
        H5Tset_cset(t, H5T_CSET_UTF8)
        try value.withCString { cs in
            var p: UnsafePointer<CChar>? = cs
            try writeAttribute(object, name, type: t, &p)
        }
    }

    public func setAttribute(_ object: String, _ name: String, int value: Int) throws {
        Self.lock.lock(); defer { Self.lock.unlock() }
        var v = Int64(value)
        try writeAttribute(object, name, type: gd_h5t_native_int64(), &v)
    }

    public func setAttribute(_ object: String, _ name: String, double value: Double) throws {
        Self.lock.lock(); defer { Self.lock.unlock() }
        var v = value
        try writeAttribute(object, name, type: gd_h5t_native_double(), &v)
    }

    private func writeAttribute(_ object: String, _ name: String, type: hid_t, _ data: UnsafeRawPointer) throws {
        let o = H5Oopen(id, object, gd_h5p_default())
        guard o >= 0 else { throw GPT2DistError(.fileFormat, "\(path): no object \(object)") }
        defer { H5Oclose(o) }
        if H5Aexists(o, name) > 0 { H5Adelete(o, name) }
        let space = H5Screate(H5S_SCALAR)
        defer { H5Sclose(space) }
        let a = H5Acreate2(o, name, type, space, gd_h5p_default(), gd_h5p_default())
        guard a >= 0 else { throw GPT2DistError(.fileFormat, "\(path): cannot create attribute \(name)") }
        defer { H5Aclose(a) }
        guard H5Awrite(a, type, data) >= 0 else { throw GPT2DistError(.fileFormat, "\(path): cannot write attribute \(name)") }
    }

    public func hasAttribute(_ object: String, _ name: String) -> Bool {
        Self.lock.lock(); defer { Self.lock.unlock() }
        let o = H5Oopen(id, object, gd_h5p_default())
        guard o >= 0 else { return false }
        defer { H5Oclose(o) }
        return H5Aexists(o, name) > 0
    }

    private func withAttribute<R>(_ object: String, _ name: String, _ body: (hid_t) throws -> R) throws -> R {
        let o = H5Oopen(id, object, gd_h5p_default())
        guard o >= 0 else { throw GPT2DistError(.fileFormat, "\(path): missing \(object)") }
        defer { H5Oclose(o) }
        guard H5Aexists(o, name) > 0 else { throw GPT2DistError(.fileFormat, "\(path): missing attribute \(object == "/" ? "" : object + "/")\(name)") }
        let a = H5Aopen(o, name, gd_h5p_default())
        guard a >= 0 else { throw GPT2DistError(.fileFormat, "\(path): cannot open attribute \(name)") }
        defer { H5Aclose(a) }
        return try body(a)
    }

    public func intAttribute(_ object: String, _ name: String) throws -> Int {
        Self.lock.lock(); defer { Self.lock.unlock() }
        return try withAttribute(object, name) { a in
            var v: Int64 = 0
            guard H5Aread(a, gd_h5t_native_int64(), &v) >= 0 else { throw GPT2DistError(.fileFormat, "\(path): attribute \(name) is not an integer") }
            return Int(v)
        }
    }

    public func doubleAttribute(_ object: String, _ name: String) throws -> Double {
        Self.lock.lock(); defer { Self.lock.unlock() }
        return try withAttribute(object, name) { a in
            var v = 0.0
            guard H5Aread(a, gd_h5t_native_double(), &v) >= 0 else { throw GPT2DistError(.fileFormat, "\(path): attribute \(name) is not a number") }
            return v
        }
    }

    public func stringAttribute(_ object: String, _ name: String) throws -> String {
        Self.lock.lock(); defer { Self.lock.unlock() }
        return try withAttribute(object, name) { a in
            let ft = H5Aget_type(a)
            defer { H5Tclose(ft) }
            guard H5Tget_class(ft) == H5T_STRING else { throw GPT2DistError(.fileFormat, "\(path): attribute \(name) is not a string") }
            if H5Tis_variable_str(ft) > 0 {
                let t = H5Tcopy(gd_h5t_c_s1())
                defer { H5Tclose(t) }
                H5Tset_size(t, gd_h5t_variable())
                H5Tset_cset(t, H5T_CSET_UTF8)
                var p: UnsafeMutablePointer<CChar>?
                guard H5Aread(a, t, &p) >= 0, let p else { throw GPT2DistError(.fileFormat, "\(path): cannot read attribute \(name)") }
                defer { H5free_memory(p) }
                return String(cString: p)
            }
            let size = H5Tget_size(ft)
            var buf = [CChar](repeating: 0, count: size + 1)
            guard H5Aread(a, ft, &buf) >= 0 else { throw GPT2DistError(.fileFormat, "\(path): cannot read attribute \(name)") }
            return String(cString: buf)
        }
    }
}
