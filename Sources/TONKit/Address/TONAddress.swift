import AttestationCore
import Foundation

/// Why a string is not a TON address; `reason` is the class a caller can act on.
public struct TONAddressError: Error, CustomStringConvertible, Equatable {
    public enum Reason: String, Sendable {
        case badCRC = "bad_crc", badTag = "bad_tag", badLength = "bad_length",
            badBase64 = "bad_base64", badWorkchain = "bad_workchain", badHex = "bad_hex"
    }
    public let reason: Reason
    public let message: String
    public var description: String { "\(reason.rawValue): \(message)" }
}

/// A standard smart-contract address: a workchain and a 256-bit account id.
///
/// Forms (TEP-0002 and ton-blockchain/ton `block.cpp`): raw `wc:hex` (decimal int32 workchain,
/// exactly 64 hex digits, either case) and user-friendly, 48 characters of base64 or base64url
/// over `tag ‖ int8 workchain ‖ hash ‖ CRC16-XMODEM` with tag 0x11 (bounceable) or 0x51
/// (non-bounceable), plus 0x80 for testnet-only.
///
/// Threat: an address that reads as one account but names another (a mistyped, truncated or
/// forged string). Every form is checked completely — length, alphabet, tag, checksum,
/// workchain range — before it names an account.
public struct TONAddress: Sendable, Hashable, CustomStringConvertible {
    public let workchain: Int32
    /// The 32-byte account id.
    public let hash: [UInt8]

    public init(workchain: Int32, hash: [UInt8]) {
        precondition(hash.count == 32, "a TON account id is 32 bytes")
        self.workchain = workchain
        self.hash = hash
    }

    /// Only 0 (basechain) and -1 (masterchain) exist; others are format-valid but name no chain.
    public var isStandardWorkchain: Bool { workchain == 0 || workchain == -1 }

    public var raw: String { "\(workchain):" + Data(hash).hex }
    public var description: String { raw }

    /// Parses either form; `bounceable` and `testnet` are those of a user-friendly string (raw
    /// strings carry neither: bounceable, mainnet).
    public static func parse(_ text: String) throws(TONAddressError) -> (
        address: TONAddress, bounceable: Bool, testnet: Bool
    ) {
        if text.contains(":") { return (try parseRaw(text), true, false) }
        return try parseFriendly(text)
    }

    public static func parseRaw(_ text: String) throws(TONAddressError) -> TONAddress {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2 else {
            throw TONAddressError(reason: .badWorkchain, message: "'\(text.prefix(80))' is not wc:hex")
        }
        let wcText = parts[0]
        let digits = wcText.hasPrefix("-") ? wcText.dropFirst() : wcText[...]
        guard !digits.isEmpty, digits.count <= 11, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
            let wide = Int64(wcText), wide >= Int64(Int32.min) + 1, wide <= Int64(Int32.max)
        else {
            throw TONAddressError(reason: .badWorkchain, message: "workchain '\(wcText.prefix(20))' is not an int32")
        }
        let hex = Array(parts[1].utf8)
        guard hex.count == 64 else {
            throw TONAddressError(reason: .badLength, message: "the account id has \(hex.count) hex digits, not 64")
        }
        // 64 digits that decode to 32 bytes (a "0x" prefix would decode to fewer).
        guard let hash = Data(hex: parts[1]), hash.count == 32 else {
            throw TONAddressError(reason: .badHex, message: "the account id is not hexadecimal")
        }
        return TONAddress(workchain: Int32(wide), hash: [UInt8](hash))
    }

    public static func parseFriendly(_ text: String) throws(TONAddressError) -> (
        address: TONAddress, bounceable: Bool, testnet: Bool
    ) {
        let chars = Array(text.utf8)
        let std = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        let url = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        guard chars.allSatisfy({ std.contains($0) || url.contains($0) }) else {
            if chars.isEmpty { throw TONAddressError(reason: .badLength, message: "empty address") }
            throw TONAddressError(reason: .badBase64, message: "characters outside both base64 alphabets")
        }
        guard chars.count == 48 else {
            throw TONAddressError(
                reason: .badLength, message: "a user-friendly address is 48 characters, not \(chars.count)")
        }
        // One alphabet per string: mixing them is no encoder's output.
        if chars.contains(where: { $0 == 0x2B || $0 == 0x2F }) && chars.contains(where: { $0 == 0x2D || $0 == 0x5F }) {
            throw TONAddressError(reason: .badBase64, message: "mixes the base64 and base64url alphabets")
        }
        let standard = String(decoding: chars.map { $0 == 0x2D ? 0x2B : $0 == 0x5F ? 0x2F : $0 }, as: UTF8.self)
        guard let data = Data(base64Encoded: standard), data.count == 36 else {
            throw TONAddressError(reason: .badBase64, message: "not base64")
        }
        let bytes = [UInt8](data)
        let crc = TONChecksum.crc16(bytes[0..<34])
        guard UInt16(bytes[34]) << 8 | UInt16(bytes[35]) == crc else {
            throw TONAddressError(reason: .badCRC, message: "the checksum does not match")
        }
        let tag = bytes[0]
        guard tag & 0x3F == 0x11 else {
            throw TONAddressError(reason: .badTag, message: String(format: "tag 0x%02x is not an address tag", tag))
        }
        let address = TONAddress(workchain: Int32(Int8(bitPattern: bytes[1])), hash: Array(bytes[2..<34]))
        return (address, tag & 0x40 == 0, tag & 0x80 != 0)
    }

    /// The user-friendly form. Only workchains that fit in a signed byte have one.
    public func friendly(bounceable: Bool = true, testnet: Bool = false, urlSafe: Bool = true) -> String? {
        guard let wc = Int8(exactly: workchain) else { return nil }
        var bytes: [UInt8] = [0x11 | (bounceable ? 0 : 0x40) | (testnet ? 0x80 : 0), UInt8(bitPattern: wc)] + hash
        let crc = TONChecksum.crc16(bytes)
        bytes += [UInt8(crc >> 8), UInt8(crc & 0xFF)]
        let b64 = Data(bytes).base64EncodedString()
        return urlSafe ? b64.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_") : b64
    }
}
