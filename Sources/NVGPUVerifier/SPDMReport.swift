import AttestationCore
import Foundation

/// An NVIDIA GPU attestation report: the SPDM 1.1 GET_MEASUREMENTS request the driver sent
/// (with the verifier's nonce) followed by the GPU's MEASUREMENTS response, whose last 96 bytes
/// are an ECDSA P-384 signature (r ‖ s) over everything before them (DMTF DSP0274 1.1).
///
/// Parsing checks every length against the bytes that hold it and refuses anything else: a
/// report is read one way only. Multi-byte integers are little-endian.
public struct SPDMReport: Sendable, Equatable {
    /// The request's nonce: the verifier's freshness value, covered by the signature.
    public let nonce: [UInt8]
    /// The responder's own nonce (not compared with anything).
    public let responderNonce: [UInt8]
    /// Measurement values by SPDM index (1-based), each a DMTF digest.
    public let measurements: [Int: [UInt8]]
    /// NVIDIA's opaque data: fields by type, in the report's order.
    public let opaque: OpaqueData
    /// The bytes the signature covers: request ‖ response up to the signature.
    public let signedBytes: [UInt8]
    /// r ‖ s, 48 bytes each.
    public let signature: [UInt8]

    static let requestLength = 37
    static let signatureLength = 96
    /// Largest report NVML returns (`NVML_CC_GPU_ATTESTATION_REPORT_SIZE`).
    public static let maxSize = 8192

    public struct Malformed: Error, CustomStringConvertible, Equatable {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    public init(_ bytes: [UInt8]) throws(Malformed) {
        guard bytes.count <= Self.maxSize else {
            throw Malformed("report of \(bytes.count) bytes; limit \(Self.maxSize)")
        }
        var reader = ByteReader(bytes)
        nonce = try Self.readRequest(&reader)
        guard let version = reader.u8(), let code = reader.u8(), reader.skip(2), let count = reader.u8(),
            let length = reader.read(3)
        else { throw Malformed("the response is shorter than its header") }
        guard version == 0x11 else { throw Malformed("response SPDM version 0x\(Self.hex2(version)), not 1.1") }
        guard code == 0x60 else { throw Malformed("response code 0x\(Self.hex2(code)) is not MEASUREMENTS") }
        let recordLength = Int(length[0]) | Int(length[1]) << 8 | Int(length[2]) << 16
        guard let record = reader.read(recordLength) else {
            throw Malformed("the measurement record of \(recordLength) bytes runs past the report")
        }
        measurements = try Self.readBlocks(record, count: Int(count))
        guard let responderNonce = reader.read(32), let opaqueLength = reader.u16le(),
            let opaqueBytes = reader.read(Int(opaqueLength))
        else { throw Malformed("the response ends inside its nonce or opaque data") }
        self.responderNonce = responderNonce
        opaque = try OpaqueData(opaqueBytes)
        guard reader.remaining == Self.signatureLength else {
            throw Malformed(
                "\(reader.remaining) bytes follow the opaque data; a P-384 signature is \(Self.signatureLength)")
        }
        signedBytes = Array(bytes[..<reader.offset])
        signature = Array(bytes[reader.offset...])
    }

    /// The request: version 1.1, GET_MEASUREMENTS, a signature asked for, every block asked for.
    static func readRequest(_ reader: inout ByteReader) throws(Malformed) -> [UInt8] {
        guard let header = reader.read(4), let nonce = reader.read(32), reader.skip(1) else {
            throw Malformed("the report is shorter than a GET_MEASUREMENTS request (\(requestLength) bytes)")
        }
        guard header[0] == 0x11, header[1] == 0xE0 else {
            throw Malformed("the report does not start with an SPDM 1.1 GET_MEASUREMENTS request")
        }
        guard header[2] & 0x01 == 1, header[3] == 0xFF else {
            throw Malformed("the request does not ask for every measurement, signed")
        }
        return nonce
    }

    /// The measurement record: `count` blocks filling it exactly, each a DMTF digest, no index twice.
    static func readBlocks(_ record: [UInt8], count: Int) throws(Malformed) -> [Int: [UInt8]] {
        var reader = ByteReader(record)
        var blocks = [Int: [UInt8]]()
        for _ in 0..<count {
            guard let index = reader.u8(), let specification = reader.u8(), let size = reader.u16le(),
                let body = reader.read(Int(size))
            else { throw Malformed("a measurement block runs past the measurement record") }
            guard specification == 0x01 else { throw Malformed("measurement \(index) is not in DMTF's format") }
            guard body.count >= 3, body[0] & 0x80 == 0 else {
                throw Malformed("measurement \(index) is not a digest")
            }
            let valueSize = Int(body[1]) | Int(body[2]) << 8
            guard valueSize == body.count - 3 else {
                throw Malformed("measurement \(index) says \(valueSize) bytes in a block of \(body.count - 3)")
            }
            guard blocks.updateValue(Array(body[3...]), forKey: Int(index)) == nil else {
                throw Malformed("measurement index \(index) occurs twice")
            }
        }
        guard reader.isAtEnd else { throw Malformed("\(reader.remaining) bytes follow the last measurement block") }
        return blocks
    }

    static func hex2(_ byte: UInt8) -> String { [byte].hexString }
}

/// NVIDIA's opaque data in a measurement response: fields of a 16-bit type and a 16-bit length,
/// each type at most once, filling the data exactly.
public struct OpaqueData: Sendable, Equatable {
    public let fields: [UInt16: [UInt8]]

    public enum Field: UInt16, Sendable {
        case driverVersion = 3
        case gpuInfo = 4
        case vbiosVersion = 6
        case nvdec0Status = 11
        case boardID = 14
        case chipSKU = 15
        case chipSKUModifier = 16
        case project = 17
        case projectSKU = 18
        case projectSKUModifier = 19
        case fwid = 20
        case protectedPCIeStatus = 21
    }

    public init(_ bytes: [UInt8]) throws(SPDMReport.Malformed) {
        var reader = ByteReader(bytes)
        var fields = [UInt16: [UInt8]]()
        while !reader.isAtEnd {
            guard let type = reader.u16le(), let length = reader.u16le(), let value = reader.read(Int(length)) else {
                throw SPDMReport.Malformed("an opaque data field runs past the opaque data")
            }
            guard fields.updateValue(value, forKey: type) == nil else {
                throw SPDMReport.Malformed("opaque data field \(type) occurs twice")
            }
        }
        self.fields = fields
    }

    public subscript(_ field: Field) -> [UInt8]? { fields[field.rawValue] }

    /// A NUL-padded text field, its padding removed; nil when absent or not printable ASCII.
    public func text(_ field: Field) -> String? {
        guard var bytes = self[field] else { return nil }
        while bytes.last == 0 { bytes.removeLast() }
        guard bytes.allSatisfy({ (0x20..<0x7F).contains($0) }) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The driver version, e.g. `550.90.07`.
    public var driverVersion: String? { text(.driverVersion) }

    /// The VBIOS version as NVIDIA writes it, e.g. `96.00.9f.00.01`: bytes 3, 2, 1, 0 and 4 of
    /// the field, in hex.
    public var vbiosVersion: String? {
        guard let b = self[.vbiosVersion], b.count >= 5 else { return nil }
        return [b[3], b[2], b[1], b[0], b[4]].map { [$0].hexString }.joined(separator: ".")
    }
}
