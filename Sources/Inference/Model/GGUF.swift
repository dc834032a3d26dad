import Foundation

/// A GGUF file (versions 2 and 3, little-endian), memory-mapped read-only. Parsing checks every
/// length and offset against the file before it is used, so a truncated or hostile file is an
/// `InferenceError` (`model.malformed`), never an out-of-bounds read.
public final class GGUFFile: @unchecked Sendable {
    /// Metadata caps. Real models have a few dozen keys and a few hundred tensors; a vocabulary
    /// array holds up to a few hundred thousand strings. Anything far beyond is not a model.
    static let maxTensors = 1 << 16
    static let maxKeys = 1 << 16
    static let maxArrayCount = 1 << 24
    static let maxStringBytes = 1 << 24
    static let maxArrayDepth = 4
    static let maxDims = 4

    public let url: URL
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    public let tensors: [String: GGUFTensorInfo]
    /// Tensor names in file order.
    public let tensorNames: [String]
    public let alignment: Int
    /// Byte offset of the tensor data section.
    public let dataOffset: Int
    public let fileSize: Int

    private let mapping: UnsafeRawBufferPointer

    /// The whole mapped file.
    public func withMappedBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R { try body(mapping) }

    public init(url: URL) throws(InferenceError) {
        self.url = url
        let fd = open(url.path, O_RDONLY)
        guard fd >= 0 else {
            throw InferenceError(.modelUnreadable, "\(url.path): cannot open (\(String(cString: strerror(errno))))")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            throw InferenceError(.modelUnreadable, "\(url.path): not a regular file")
        }
        let size = Int(info.st_size)
        guard size >= 24 else {
            throw InferenceError(.modelMalformed, "\(url.path): \(size) bytes is too short for a GGUF header")
        }
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != MAP_FAILED else {
            throw InferenceError(.modelUnreadable, "\(url.path): cannot map (\(String(cString: strerror(errno))))")
        }
        mapping = UnsafeRawBufferPointer(start: base, count: size)
        fileSize = size
        do throws(InferenceError) {
            var reader = GGUFReader(bytes: mapping)
            let magic = try reader.u32()
            guard magic == 0x4655_4747 else {
                throw InferenceError(
                    .modelMalformed, "\(url.lastPathComponent): not a GGUF file (magic \(String(magic, radix: 16)))")
            }
            version = try reader.u32()
            guard version == 2 || version == 3 else {
                throw InferenceError(.modelUnsupported, "GGUF version \(version) is not supported (2 and 3 are)")
            }
            let tensorCount = try reader.u64()
            let keyCount = try reader.u64()
            guard tensorCount <= UInt64(Self.maxTensors) else {
                throw InferenceError(.modelMalformed, "tensor count \(tensorCount) exceeds \(Self.maxTensors)")
            }
            guard keyCount <= UInt64(Self.maxKeys) else {
                throw InferenceError(.modelMalformed, "metadata key count \(keyCount) exceeds \(Self.maxKeys)")
            }
            var metadata = [String: GGUFValue]()
            for _ in 0..<keyCount {
                let key = try reader.string()
                let type = try reader.u32()
                let value = try reader.value(type: type, depth: 0)
                guard metadata.updateValue(value, forKey: key) == nil else {
                    throw InferenceError(.modelMalformed, "metadata key '\(key)' appears twice")
                }
            }
            self.metadata = metadata
            let alignment = metadata["general.alignment"]?.int ?? 32
            guard alignment > 0, alignment <= 1 << 16, alignment & (alignment - 1) == 0 else {
                throw InferenceError(
                    .modelMalformed, "general.alignment \(alignment) is not a power of two up to 65536")
            }
            self.alignment = alignment

            var tensors = [String: GGUFTensorInfo]()
            var names = [String]()
            for _ in 0..<tensorCount {
                let name = try reader.string()
                let dimCount = try reader.u32()
                guard (1...UInt32(Self.maxDims)).contains(dimCount) else {
                    throw InferenceError(
                        .modelMalformed, "tensor '\(name)' has \(dimCount) dimensions (1-\(Self.maxDims) allowed)")
                }
                var dims = [Int]()
                for _ in 0..<dimCount {
                    let d = try reader.u64()
                    guard d >= 1, d <= 1 << 32 else {
                        throw InferenceError(.modelMalformed, "tensor '\(name)' has dimension \(d)")
                    }
                    dims.append(Int(d))
                }
                let rawType = try reader.u32()
                let offset = try reader.u64()
                guard offset <= UInt64(size) else {
                    throw InferenceError(
                        .modelMalformed, "tensor '\(name)' offset \(offset) is past the end of the file")
                }
                let info = try GGUFTensorInfo(name: name, dims: dims, rawType: rawType, offset: Int(offset))
                guard tensors.updateValue(info, forKey: name) == nil else {
                    throw InferenceError(.modelMalformed, "tensor '\(name)' appears twice")
                }
                names.append(name)
            }
            let unaligned = reader.offset
            let dataOffset = (unaligned + alignment - 1) / alignment * alignment
            for name in names {
                let t = tensors[name]!
                guard t.offset % alignment == 0 else {
                    throw InferenceError(
                        .modelMalformed, "tensor '\(name)' offset \(t.offset) is not aligned to \(alignment)")
                }
                if let bytes = t.byteCount {
                    guard dataOffset + t.offset + bytes <= size else {
                        throw InferenceError(
                            .modelMalformed,
                            "tensor '\(name)' (\(bytes) bytes at \(dataOffset + t.offset)) runs past the end of the \(size)-byte file: truncated?"
                        )
                    }
                }
            }
            // Assigned last: until every property is set, a throw does not run deinit, so the
            // mapping is unmapped exactly once (by the catch below). Unmapping it twice could
            // unmap another file mapped at the same address meanwhile.
            self.tensors = tensors
            tensorNames = names
            self.dataOffset = dataOffset
        } catch {
            munmap(base, size)
            throw error
        }
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: mapping.baseAddress), mapping.count) }

    /// The bytes of a tensor. Only valid while this file is alive.
    public func bytes(of tensor: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        // Bounds were checked at open for every tensor of a supported type.
        let count = tensor.byteCount ?? 0
        return UnsafeRawBufferPointer(
            rebasing: mapping[(dataOffset + tensor.offset)..<(dataOffset + tensor.offset + count)])
    }

    public func string(_ key: String) -> String? { metadata[key]?.string }
    public func int(_ key: String) -> Int? { metadata[key]?.int }
    public func float(_ key: String) -> Double? { metadata[key]?.double }
}

/// One metadata value.
public enum GGUFValue: Sendable, Equatable {
    case uint(UInt64)
    case int(Int64)
    case float(Double)
    case bool(Bool)
    case string(String)
    case array([GGUFValue])

    public var int: Int? {
        switch self {
        case .uint(let v): v <= UInt64(Int.max) ? Int(v) : nil
        case .int(let v): Int(v)
        default: nil
        }
    }
    public var double: Double? {
        switch self {
        case .float(let v): v
        case .uint(let v): Double(v)
        case .int(let v): Double(v)
        default: nil
        }
    }
    public var string: String? { if case .string(let s) = self { s } else { nil } }
    public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var array: [GGUFValue]? { if case .array(let a) = self { a } else { nil } }
}

/// Tensor types the engine knows. Others parse (so the error can name them) but are refused
/// when a model needs them.
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case f32 = 0
    case f16 = 1
    case q4_0 = 2
    case q4_1 = 3
    case q5_0 = 6
    case q5_1 = 7
    case q8_0 = 8
    case q4_K = 12
    case q5_K = 13
    case q6_K = 14

    /// Elements per block and bytes per block.
    public var block: (elements: Int, bytes: Int) {
        switch self {
        case .f32: (1, 4)
        case .f16: (1, 2)
        case .q4_0: (32, 18)
        case .q4_1: (32, 20)
        case .q5_0: (32, 22)
        case .q5_1: (32, 24)
        case .q8_0: (32, 34)
        case .q4_K: (256, 144)
        case .q5_K: (256, 176)
        case .q6_K: (256, 210)
        }
    }

    public var name: String {
        switch self {
        case .f32: "F32"
        case .f16: "F16"
        case .q4_0: "Q4_0"
        case .q4_1: "Q4_1"
        case .q5_0: "Q5_0"
        case .q5_1: "Q5_1"
        case .q8_0: "Q8_0"
        case .q4_K: "Q4_K"
        case .q5_K: "Q5_K"
        case .q6_K: "Q6_K"
        }
    }

    /// The K-quants: super-blocks of 256 weights with 6- or 8-bit sub-block scales, multiplied
    /// against activations quantized in blocks of 256 (Q8_K).
    public var isKQuant: Bool { self == .q4_K || self == .q5_K || self == .q6_K }

    /// Names of the types ggml defines, for error messages about the ones not supported here.
    static func ggmlName(_ raw: UInt32) -> String {
        let names: [UInt32: String] = [
            9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 15: "Q8_K",
            16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
            23: "IQ4_XS",
            24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0",
            39: "MXFP4",
        ]
        return GGMLType(rawValue: raw)?.name ?? names[raw] ?? "type \(raw)"
    }
}

/// Where a tensor lives and what it holds. `dims[0]` is the innermost (row length).
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    public let dims: [Int]
    public let rawType: UInt32
    /// Offset from the start of the data section.
    public let offset: Int
    public var type: GGMLType? { GGMLType(rawValue: rawType) }
    public let elementCount: Int

    init(name: String, dims: [Int], rawType: UInt32, offset: Int) throws(InferenceError) {
        self.name = name
        self.dims = dims
        self.rawType = rawType
        self.offset = offset
        var count = 1
        for d in dims {
            let (product, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow, product <= 1 << 40 else {
                throw InferenceError(.modelMalformed, "tensor '\(name)' is implausibly large")
            }
            count = product
        }
        elementCount = count
        if let type = GGMLType(rawValue: rawType) {
            guard dims[0] % type.block.elements == 0 else {
                throw InferenceError(
                    .modelMalformed, "tensor '\(name)' row of \(dims[0]) is not a whole number of \(type.name) blocks")
            }
        }
    }

    /// Size in bytes, for known types.
    public var byteCount: Int? {
        guard let type else { return nil }
        return elementCount / type.block.elements * type.block.bytes
    }

    public var rows: Int { elementCount / dims[0] }
    public var rowLength: Int { dims[0] }
    public var typeName: String { GGMLType.ggmlName(rawType) }
}

/// Bounds-checked little-endian reads over the mapped header.
struct GGUFReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    mutating func take(_ n: Int) throws(InferenceError) -> UnsafeRawBufferPointer {
        guard n >= 0, n <= bytes.count - offset else {
            throw InferenceError(.modelMalformed, "header is truncated at byte \(offset) (needed \(n) more bytes)")
        }
        defer { offset += n }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)])
    }

    mutating func u8() throws(InferenceError) -> UInt8 { try take(1)[0] }
    mutating func u16() throws(InferenceError) -> UInt16 {
        UInt16(littleEndian: try take(2).loadUnaligned(as: UInt16.self))
    }
    mutating func u32() throws(InferenceError) -> UInt32 {
        UInt32(littleEndian: try take(4).loadUnaligned(as: UInt32.self))
    }
    mutating func u64() throws(InferenceError) -> UInt64 {
        UInt64(littleEndian: try take(8).loadUnaligned(as: UInt64.self))
    }

    mutating func string() throws(InferenceError) -> String {
        let n = try u64()
        guard n <= UInt64(GGUFFile.maxStringBytes) else {
            throw InferenceError(.modelMalformed, "string of \(n) bytes at \(offset) exceeds the cap")
        }
        let raw = try take(Int(n))
        guard let s = String(validating: raw, as: UTF8.self) else {
            throw InferenceError(.modelMalformed, "string at \(offset - Int(n)) is not UTF-8")
        }
        return s
    }

    mutating func value(type: UInt32, depth: Int) throws(InferenceError) -> GGUFValue {
        switch type {
        case 0: return .uint(UInt64(try u8()))
        case 1: return .int(Int64(Int8(bitPattern: try u8())))
        case 2: return .uint(UInt64(try u16()))
        case 3: return .int(Int64(Int16(bitPattern: try u16())))
        case 4: return .uint(UInt64(try u32()))
        case 5: return .int(Int64(Int32(bitPattern: try u32())))
        case 6: return .float(Double(Float(bitPattern: try u32())))
        case 7:
            let b = try u8()
            guard b <= 1 else { throw InferenceError(.modelMalformed, "bool value \(b) at \(offset - 1)") }
            return .bool(b == 1)
        case 8: return .string(try string())
        case 9:
            guard depth < GGUFFile.maxArrayDepth else {
                throw InferenceError(.modelMalformed, "arrays nested deeper than \(GGUFFile.maxArrayDepth)")
            }
            let itemType = try u32()
            let count = try u64()
            guard count <= UInt64(GGUFFile.maxArrayCount) else {
                throw InferenceError(.modelMalformed, "array of \(count) items exceeds the cap")
            }
            // Each item takes at least one byte: a count larger than what is left is a lie.
            guard count <= UInt64(bytes.count - offset) else {
                throw InferenceError(.modelMalformed, "array of \(count) items runs past the end of the file")
            }
            var items = [GGUFValue]()
            items.reserveCapacity(Int(count))
            for _ in 0..<count { items.append(try value(type: itemType, depth: depth + 1)) }
            return .array(items)
        case 10: return .uint(try u64())
        case 11: return .int(Int64(bitPattern: try u64()))
        case 12: return .float(Double(bitPattern: try u64()))
        default: throw InferenceError(.modelMalformed, "unknown metadata value type \(type) at \(offset - 4)")
        }
    }
}
